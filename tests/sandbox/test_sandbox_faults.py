"""Every fault kind of the sandbox, over HTTP against the running process."""

from __future__ import annotations

import hashlib
import random
import time

import pytest
import requests

from wechat_sandbox.client import SandboxAdmin, SandboxWeChat, insertbill_body

PDF = b"%PDF-1.7\n% fault tests\n%%EOF\n"


@pytest.fixture
def media_id(wx: SandboxWeChat, token: str) -> str:
    return wx.setpdf(token, PDF)["s_media_id"]


def test_latency_adds_a_fixed_delay(sandbox: SandboxAdmin, wx: SandboxWeChat, token: str) -> None:
    # A delay far above a loaded machine's round trip, so that "not slowed" cannot be missed.
    sandbox.add_fault(endpoint="getauthdata", kind="latency", latency_ms=2000)
    started = time.monotonic()
    assert wx.getauthdata(token, "o-1")["errcode"] == 0
    assert time.monotonic() - started >= 2.0
    started = time.monotonic()
    wx.stable_token()  # other endpoints are not slowed
    assert time.monotonic() - started < 1.5


def test_latency_adds_to_an_errcode_rule(sandbox: SandboxAdmin, wx: SandboxWeChat, token) -> None:
    sandbox.add_fault(endpoint="getauthdata", kind="latency", latency_ms=100)
    sandbox.add_fault(endpoint="getauthdata", kind="errcode", errcode=45011, latency_ms=100)
    started = time.monotonic()
    assert wx.getauthdata(token, "o-1")["errcode"] == 45011
    assert time.monotonic() - started >= 0.2


def test_http_5xx_for_the_next_n_calls(
    sandbox: SandboxAdmin, wx: SandboxWeChat, token: str, media_id: str
) -> None:
    fault_id = sandbox.add_fault(endpoint="insertbill", kind="http_5xx", count=2)
    body = insertbill_body("o-5xx", media_id)
    url = "/nontax/insertbill"
    for _ in range(2):
        answer = wx.request("POST", url, params={"access_token": token}, json=body)
        assert answer.status_code == 503 and "json" not in answer.headers["content-type"]
    assert wx.insertbill(token, body)["errcode"] == 0
    [rule] = sandbox.faults()
    assert rule["id"] == fault_id and rule["spent"] and rule["hits"] == 2
    assert sandbox.state()["faults"] == []  # only active rules there
    sandbox.add_fault(endpoint="*", kind="http_5xx", status=502, count=1)
    assert wx.request("POST", "/cgi-bin/stable_token", json={}).status_code == 502
    assert sandbox.calls()["insertbill"] == 3  # fault-injected answers count as calls
    assert sandbox.orders()["o-5xx"]["errcodes"] == {"http_error": 2, "0": 1}


@pytest.mark.parametrize("errcode", [-1, 45009, 45011, 72036, 40014])
def test_errcode_fault(
    sandbox: SandboxAdmin, wx: SandboxWeChat, token: str, media_id: str, errcode: int
) -> None:
    sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=errcode, count=1)
    body = insertbill_body("o-err", media_id)
    answer = wx.insertbill(token, body)
    assert answer["errcode"] == errcode and answer["errmsg"]
    assert sandbox.bills() == []  # the call was not handled
    assert wx.insertbill(token, body)["errcode"] == 0


def test_errcode_fault_on_token_endpoints(sandbox: SandboxAdmin, wx: SandboxWeChat) -> None:
    sandbox.add_fault(endpoint="stable_token", kind="errcode", errcode=45009, errmsg="quota")
    sandbox.add_fault(endpoint="token", kind="errcode", errcode=-1, count=1)
    answer = wx.stable_token()
    assert answer["errcode"] == 45009 and answer["errmsg"].startswith("quota")
    assert wx.classic_token()["errcode"] == -1
    assert "access_token" in wx.classic_token()


def test_setpdf_fault(sandbox: SandboxAdmin, wx: SandboxWeChat, token: str) -> None:
    sandbox.add_fault(endpoint="setpdf", kind="errcode", errcode=-1, count=1)
    assert wx.setpdf(token, PDF)["errcode"] == -1
    assert wx.setpdf(token, PDF)["errcode"] == 0
    assert len(sandbox.media()) == 1


def test_first_answering_rule_wins(sandbox: SandboxAdmin, wx: SandboxWeChat, token: str) -> None:
    first = sandbox.add_fault(endpoint="getauthdata", kind="errcode", errcode=72036, count=1)
    second = sandbox.add_fault(endpoint="getauthdata", kind="errcode", errcode=45011, count=1)
    assert wx.getauthdata(token, "o-1")["errcode"] == 72036
    assert wx.getauthdata(token, "o-1")["errcode"] == 45011
    assert wx.getauthdata(token, "o-1")["errcode"] == 0
    hits = {rule["id"]: rule["hits"] for rule in sandbox.faults()}
    assert hits == {first: 1, second: 1}


def test_timeout_holds_the_answer(
    sandbox: SandboxAdmin, wx: SandboxWeChat, token: str, media_id: str
) -> None:
    sandbox.add_fault(endpoint="insertbill", kind="timeout", timeout_s=2.0, count=1)
    body = insertbill_body("o-slow", media_id)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        wx.insertbill(token, body, timeout=0.3)
    assert time.monotonic() - started < 1.5
    # The call was handled before its answer was held: the bill exists, a retry is a repeat.
    assert [b["order_id"] for b in sandbox.bills()] == ["o-slow"]
    assert wx.insertbill(token, body)["errcode"] == 72056

    sandbox.add_fault(endpoint="getauthdata", kind="timeout", timeout_s=0.3, count=1)
    started = time.monotonic()
    assert wx.getauthdata(token, "o-slow")["errcode"] == 0  # a patient client gets the answer
    assert time.monotonic() - started >= 0.3


def test_lost_answer_records_the_bill_but_drops_the_connection(
    sandbox: SandboxAdmin, wx: SandboxWeChat, token: str, media_id: str
) -> None:
    sandbox.add_fault(endpoint="insertbill", kind="lost_answer", count=1)
    body = insertbill_body("o-lost", media_id)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        wx.insertbill(token, body)
    [bill] = sandbox.bills()
    assert bill["order_id"] == "o-lost"
    assert wx.insertbill(token, body)["errcode"] == 72056
    order = sandbox.orders()["o-lost"]
    assert order["attempts"] == 2 and order["successes"] == 1 and order["repeats"] == 1
    assert sandbox.state()["lost_answers"] == 1


def test_lost_answer_on_stable_token(sandbox: SandboxAdmin, wx: SandboxWeChat) -> None:
    sandbox.add_fault(endpoint="stable_token", kind="lost_answer", count=1)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        wx.stable_token()
    [issued] = sandbox.tokens()
    again = wx.stable_token()["access_token"]
    assert hashlib.sha256(again.encode()).hexdigest() == issued["sha256"]
    assert sandbox.issued_tokens()[-1] == again


def test_token_expire_fault(sandbox: SandboxAdmin, wx: SandboxWeChat, token: str) -> None:
    sandbox.add_fault(endpoint="getauthdata", kind="token_expire", count=1)
    assert wx.getauthdata(token, "o-1")["errcode"] == 42001
    fresh = wx.access_token()
    assert fresh != token
    assert wx.getauthdata(fresh, "o-1")["errcode"] == 0


def _pattern(sandbox: SandboxAdmin, wx: SandboxWeChat, seed: int, calls: int = 24) -> list[bool]:
    sandbox.reset()
    tok = wx.access_token()
    sandbox.add_fault(
        endpoint="getauthdata", kind="errcode", errcode=-1, probability=0.5, seed=seed
    )
    return [wx.getauthdata(tok, f"o-{i}")["errcode"] == -1 for i in range(calls)]


def test_probability_is_reproducible_with_a_seed(sandbox: SandboxAdmin, wx: SandboxWeChat):
    first = _pattern(sandbox, wx, seed=7)
    assert _pattern(sandbox, wx, seed=7) == first
    assert 0 < sum(first) < len(first)
    rng = random.Random(7)  # one draw per matching call: random() < probability
    assert first == [rng.random() < 0.5 for _ in first]
    other = _pattern(sandbox, wx, seed=8)
    assert other != first
    [rule] = sandbox.faults()
    assert rule["seen"] == 24 and rule["hits"] == sum(other)


def test_probability_with_count(sandbox: SandboxAdmin, wx: SandboxWeChat, token: str) -> None:
    sandbox.add_fault(endpoint="getauthdata", kind="errcode", probability=0.5, seed=3, count=2)
    codes = [wx.getauthdata(token, "o-1")["errcode"] for _ in range(30)]
    assert codes.count(-1) == 2
    [rule] = sandbox.faults()
    assert rule["spent"] and rule["remaining"] == 0


def test_order_ids_filter(
    sandbox: SandboxAdmin, wx: SandboxWeChat, token: str, media_id: str
) -> None:
    sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=72036, order_ids=["o-b"])
    assert wx.insertbill(token, insertbill_body("o-a", media_id))["errcode"] == 0
    assert wx.insertbill(token, insertbill_body("o-b", media_id))["errcode"] == 72036
    assert wx.insertbill(token, insertbill_body("o-b", media_id))["errcode"] == 72036
    assert wx.getauthdata(token, "o-c")["errcode"] == 0
    sandbox.add_fault(endpoint="*", kind="errcode", errcode=-1, order_ids=["o-c"])
    assert wx.getauthdata(token, "o-c")["errcode"] == -1
    assert "access_token" in wx.stable_token()  # no order id: an order filter never matches


def test_remove_and_clear_faults(sandbox: SandboxAdmin, wx: SandboxWeChat, token: str) -> None:
    keep = sandbox.add_fault(endpoint="getauthdata", kind="errcode", errcode=45011)
    drop = sandbox.add_fault(endpoint="getauthdata", kind="latency", latency_ms=1)
    sandbox.remove_fault(drop)
    assert [rule["id"] for rule in sandbox.faults()] == [keep]
    assert wx.getauthdata(token, "o-1")["errcode"] == 45011
    sandbox.clear_faults()
    assert sandbox.faults() == []
    assert wx.getauthdata(token, "o-1")["errcode"] == 0
