"""The sandbox's pusher delivers as WeChat does: an answer ends it; no answer within the timeout,
a refused connection or a 5xx is tried again, three tries in all, each freshly signed; then it
gives up."""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, urlsplit

import pytest

from local_http import Answer, recording_server
from wechat_sandbox.process import free_port
from wechat_sandbox.pusher import EventPusher, authorization_xml

KEY = "a" * 43


def _pusher(url: str) -> EventPusher:
    return EventPusher(
        url, token="tok", appid="wx-unit", encoding_aes_key=KEY, timeout_s=0.5, retry_delay_s=0
    )


def test_an_answer_ends_the_delivery_and_a_4xx_is_not_tried_again():
    with recording_server(Answer(200, b"success")) as server:
        result = _pusher(server.url).push(authorization_xml("o-1"))
        assert (result.status, result.body, result.tries, result.delivered) == (
            200, "success", 1, True,
        )  # fmt: skip
        server.answer = Answer(403, b"mis-signed")
        refused = _pusher(server.url).push(authorization_xml("o-1"))
        assert (refused.status, refused.tries, refused.delivered) == (403, 1, False)
    assert len(server.received) == 2


def test_a_5xx_is_tried_three_times_each_freshly_signed_then_given_up():
    with recording_server(Answer(503, b"busy")) as server:
        result = _pusher(server.url).push(authorization_xml("o-2"))
    assert (result.status, result.tries, result.delivered) == (503, 3, False)
    assert result.errors == ["HTTP 503"] * 3
    queries = [parse_qs(urlsplit(r.path).query) for r in server.received]
    assert len(queries) == 3
    assert len({q["nonce"][0] for q in queries}) == 3  # each try signed anew
    assert all(q["encrypt_type"] == ["aes"] and q["msg_signature"] for q in queries)


@pytest.mark.parametrize("receiver", ["down", "silent"])
def test_a_receiver_down_or_silent_gets_three_tries_then_the_event_is_given_up(receiver):
    with socket.socket() as sock:
        if receiver == "down":
            url = f"http://127.0.0.1:{free_port()}/cb"  # nothing listens there
        else:
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)  # connections wait in the backlog, never answered
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/cb"
        result = _pusher(url).push(authorization_xml("o-3"))
    assert (result.status, result.tries, result.delivered) == (None, 3, False)
    assert len(result.errors) == 3
    if receiver == "silent":
        assert result.seconds >= 3 * 0.5
