"""The sandbox's admin API over HTTP: closed without its admin token, and no answer ever holds
the app secret or an access token."""

from __future__ import annotations

import os
import stat

import requests

from wechat_sandbox.client import DEFAULT_SECRET, SandboxAdmin, SandboxWeChat
from wechat_sandbox.process import SandboxProcess

GET_ROUTES = ["state", "calls", "tokens", "bills", "orders", "config", "authorizations", "media"]


def test_the_admin_api_wants_its_token(sandbox_process: SandboxProcess, sandbox: SandboxAdmin):
    base = f"{sandbox_process.url}/_sandbox"
    for route in GET_ROUTES:
        assert requests.get(f"{base}/{route}", timeout=10).status_code == 401, route
        wrong = {"X-Sandbox-Admin-Token": sandbox_process.admin_token + "x"}
        assert requests.get(f"{base}/{route}", headers=wrong, timeout=10).status_code == 401
    for method, route in [("POST", "reset"), ("POST", "faults"), ("POST", "config")]:
        assert requests.request(method, f"{base}/{route}", json={}, timeout=10).status_code == 401
    assert sandbox.faults() == []  # the refused POST added nothing
    assert requests.get(f"{base}/health", timeout=10).json() == {"status": "ok"}
    assert sandbox.calls()["stable_token"] == 0


def test_no_admin_answer_holds_the_secret_or_a_token(
    sandbox_process: SandboxProcess, sandbox: SandboxAdmin
):
    wx = SandboxWeChat(sandbox.base_url)
    token = wx.access_token()
    classic = wx.classic_token()["access_token"]
    wx.close()
    headers = {"X-Sandbox-Admin-Token": sandbox_process.admin_token}
    for route in GET_ROUTES:
        answer = requests.get(f"{sandbox.base_url}/_sandbox/{route}", headers=headers, timeout=10)
        assert answer.status_code == 200, route
        for secret in (DEFAULT_SECRET, token, classic):
            assert secret not in answer.text, route
    assert len(sandbox.tokens()) == 2 and all("sha256" in t for t in sandbox.tokens())
    # The harness learns the tokens from its own file, which only its owner may read.
    assert sandbox.issued_tokens()[-2:] == [token, classic]
    assert stat.S_IMODE(os.stat(sandbox_process.tokens_file).st_mode) == 0o600
