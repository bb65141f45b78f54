"""The failure webhook: sent to a real local server, and its URL's key never reaches a log."""

from __future__ import annotations

import json
import logging

import pytest

from local_http import Answer, recording_server
from wechat_nontax.notify import notify_failure
from wechat_sandbox.process import free_port

KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"


def _use(monkeypatch, url):
    monkeypatch.setenv("AIRFLOW_CONN_NONTAX_NOTIFY", json.dumps({"conn_type": "http", "host": url}))


def _logged(caplog, capfd) -> str:
    """Everything logged: Airflow's logging may route records to stderr rather than caplog."""
    captured = capfd.readouterr()
    return caplog.text + captured.out + captured.err


def _context():
    return {"run_id": "manual__1", "exception": RuntimeError("issue_bills failed\nmore")}


def test_the_message_reaches_the_webhook(monkeypatch):
    with recording_server() as webhook:
        _use(monkeypatch, f"{webhook.url}/cgi-bin/webhook/send?key={KEY}")
        notify_failure(_context())
    [request] = webhook.received
    assert request.path == f"/cgi-bin/webhook/send?key={KEY}"
    assert json.loads(request.body)["reason"] == "issue_bills failed"


def test_an_unreachable_webhook_logs_its_host_never_its_key(monkeypatch, caplog, capfd):
    _use(monkeypatch, f"http://127.0.0.1:{free_port()}/cgi-bin/webhook/send?key={KEY}")
    with caplog.at_level(logging.DEBUG):
        notify_failure(_context())
    logged = _logged(caplog, capfd)
    assert "could not send the failure notification to 127.0.0.1: ConnectionError" in logged
    assert KEY not in logged


@pytest.mark.parametrize("status", [500, 302])
def test_a_refusing_webhook_logs_its_status_never_its_key(status, monkeypatch, caplog, capfd):
    # The answer quotes the URL, as some gateways' error pages do; a redirect is not followed.
    answer = Answer(status, f"error for ?access_token={KEY}".encode(), {"Location": "/other"})
    with recording_server(answer) as webhook, caplog.at_level(logging.DEBUG):
        _use(monkeypatch, f"{webhook.url}/robot/send?access_token={KEY}")
        notify_failure(_context())
    assert [r.path for r in webhook.received] == [f"/robot/send?access_token={KEY}"]
    logged = _logged(caplog, capfd)
    assert f"answered HTTP {status}" in logged
    assert KEY not in logged
