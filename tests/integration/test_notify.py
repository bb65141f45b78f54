"""The failure webhook: sent to a real local server, and its URL's key never reaches a log."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from wechat_nontax.notify import notify_failure
from wechat_sandbox.process import free_port

KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"


class _Webhook(BaseHTTPRequestHandler):
    status = 200
    received: list[tuple[str, bytes]] = []  # noqa: RUF012 (one server per test)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, body))
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(f"error for {self.path}".encode())  # an answer that quotes the URL

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Webhook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _use(monkeypatch, url):
    monkeypatch.setenv("AIRFLOW_CONN_NONTAX_NOTIFY", json.dumps({"conn_type": "http", "host": url}))


def _logged(caplog, capfd) -> str:
    """Everything logged: Airflow's logging may route records to stderr rather than caplog."""
    captured = capfd.readouterr()
    return caplog.text + captured.out + captured.err


def _context():
    return {"run_id": "manual__1", "exception": RuntimeError("issue_bills failed\nmore")}


def test_the_message_reaches_the_webhook(webhook, monkeypatch):
    _use(monkeypatch, f"http://127.0.0.1:{webhook.server_port}/cgi-bin/webhook/send?key={KEY}")
    notify_failure(_context())
    [(path, body)] = _Webhook.received
    assert path == f"/cgi-bin/webhook/send?key={KEY}"
    assert json.loads(body)["reason"] == "issue_bills failed"


def test_an_unreachable_webhook_logs_its_host_never_its_key(monkeypatch, caplog, capfd):
    _use(monkeypatch, f"http://127.0.0.1:{free_port()}/cgi-bin/webhook/send?key={KEY}")
    with caplog.at_level(logging.DEBUG):
        notify_failure(_context())
    logged = _logged(caplog, capfd)
    assert "could not send the failure notification to 127.0.0.1: ConnectionError" in logged
    assert KEY not in logged


def test_a_refusing_webhook_logs_its_status_never_its_key(webhook, monkeypatch, caplog, capfd):
    _use(monkeypatch, f"http://127.0.0.1:{webhook.server_port}/robot/send?access_token={KEY}")
    _Webhook.status = 500
    try:
        with caplog.at_level(logging.DEBUG):
            notify_failure(_context())
    finally:
        _Webhook.status = 200
    assert len(_Webhook.received) == 1
    logged = _logged(caplog, capfd)
    assert "answered HTTP 500" in logged
    assert KEY not in logged
