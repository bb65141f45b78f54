"""Starting and stopping the sandbox as a process, and its command line."""

from __future__ import annotations

import os
import threading
import time

import pytest
import requests

from wechat_sandbox.__main__ import build_settings, parse_args
from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_PORT, SandboxWeChat
from wechat_sandbox.process import SandboxStartError, start_sandbox


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_start_with_env_then_stop_twice() -> None:
    env = {
        "WECHAT_SANDBOX_APPID": "wx0123456789abcdef",
        "WECHAT_SANDBOX_SECRET": "s3cr3t",
        "WECHAT_SANDBOX_CARD_IDS": "pCardOne, pCardTwo",
    }
    with start_sandbox(env=env) as proc:
        assert proc.url == f"http://127.0.0.1:{proc.port}"
        admin = proc.admin()
        config = admin.config()
        assert config["apps"] == ["wx0123456789abcdef"]  # never the secret
        assert config["card_ids"] == ["pCardOne", "pCardTwo"]
        wx = SandboxWeChat(proc.url, appid="wx0123456789abcdef", secret="s3cr3t")
        token = wx.access_token()
        # Noisy paths must stay quiet in the server's output: a lost answer, broken multipart.
        admin.add_fault(endpoint="getauthdata", kind="lost_answer", count=1)
        with pytest.raises(requests.RequestException):
            wx.getauthdata(token, "o-1")
        broken = wx.request(
            "POST",
            "/card/invoice/platform/setpdf",
            params={"access_token": token},
            data=b"--x\r\nnonsense",
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        assert broken.json()["errcode"] == 47001
        pid = proc.pid
    assert _gone(pid)
    proc.stop()  # idempotent
    output = proc.stderr_text()
    assert "Traceback" not in output and "ERROR" not in output, output
    assert token not in output  # no access log


def test_stop_does_not_wait_for_a_held_answer() -> None:
    proc = start_sandbox()
    proc.admin().add_fault(endpoint="stable_token", kind="timeout", timeout_s=60)
    wx = SandboxWeChat(proc.url, timeout=30)
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(wx.stable_token())
        except requests.RequestException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)
    started = time.monotonic()
    proc.stop()
    assert time.monotonic() - started < 8
    caller.join(10)
    assert outcome and _gone(proc.pid)


def test_a_failed_start_raises_with_the_servers_output() -> None:
    with pytest.raises(SandboxStartError, match="token_ttl_s"):
        start_sandbox(env={"WECHAT_SANDBOX_TOKEN_TTL_S": "soon"}, timeout=10)


def test_command_line_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WECHAT_SANDBOX_APPID", raising=False)
    monkeypatch.delenv("WECHAT_SANDBOX_PORT", raising=False)
    assert build_settings(parse_args([])).port == DEFAULT_PORT == 8765
    monkeypatch.setenv("WECHAT_SANDBOX_PORT", "9911")
    settings = build_settings(parse_args([]))
    assert settings.port == 9911 and settings.host == "127.0.0.1"
    assert list(settings.apps) == [DEFAULT_APPID]
    settings = build_settings(
        parse_args(["--port", "9000", "--card-ids", "a,b", "--token-ttl", "60", "--secret", "x"])
    )
    assert settings.port == 9000 and settings.card_ids == ["a", "b"]
    assert settings.token_ttl_s == 60 and settings.apps == {DEFAULT_APPID: "x"}
