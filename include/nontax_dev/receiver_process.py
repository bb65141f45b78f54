"""Run `nontax receiver` as a subprocess in its own process group (tests, the benchmark), with
callback credentials of its own, its spool and its log where the caller says."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from wechat_nontax.settings import CALLBACK_CONN_ID, RECEIVER_PATH
from wechat_sandbox.process import free_port
from wechat_sandbox.pusher import EventPusher


@dataclass(frozen=True)
class CallbackSecrets:
    """The callback token, EncodingAESKey (and the previous one) and appid a receiver and the
    sandbox's pusher share."""

    token: str
    appid: str
    encoding_aes_key: str | None
    previous_encoding_aes_key: str | None = None

    def connection(self) -> str:
        """AIRFLOW_CONN_WECHAT_NONTAX_CALLBACK's value (Airflow's JSON form)."""
        extra = {"encoding_aes_key": self.encoding_aes_key}
        if self.previous_encoding_aes_key:
            extra["previous_encoding_aes_key"] = self.previous_encoding_aes_key
        return json.dumps(
            {"conn_type": "generic", "login": self.appid, "password": self.token, "extra": extra}
        )

    def __repr__(self) -> str:
        return f"CallbackSecrets(appid={self.appid!r})"

    @classmethod
    def generate(cls, appid: str) -> CallbackSecrets:
        """A fresh token and EncodingAESKey, as a unit sets them in WeChat's console."""
        key = base64.b64encode(os.urandom(32)).decode()[:43]
        return cls(token=secrets.token_urlsafe(24), appid=appid, encoding_aes_key=key)

    @classmethod
    def load_or_create(cls, path: Path, appid: str) -> CallbackSecrets:
        """Generated once per state directory (the local stack), then reused."""
        with contextlib.suppress(OSError, ValueError, TypeError):
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        made = cls.generate(appid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(dataclasses.asdict(made), out)
        return made


class ReceiverProcess:
    def __init__(
        self, popen: subprocess.Popen[bytes], port: int, log_path: Path, secrets_: CallbackSecrets
    ) -> None:
        self.popen, self.port, self.log_path, self.secrets = popen, port, log_path, secrets_
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + RECEIVER_PATH

    def pusher(self, **kwargs: object) -> EventPusher:
        s = self.secrets
        return EventPusher(
            self.url,
            token=s.token,
            appid=s.appid,
            encoding_aes_key=s.encoding_aes_key,
            **kwargs,  # type: ignore[arg-type]
        )

    def health(self) -> dict[str, object]:
        return requests.get(self.base + "/healthz", timeout=5).json()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or finished."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def start_receiver(
    dsn: str,
    secrets_: CallbackSecrets,
    *,
    spool_dir: Path,
    log_path: Path,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 30,
) -> ReceiverProcess:
    """Start the receiver and return once its /healthz answers."""
    port = port or free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    child_env.update(
        {
            f"AIRFLOW_CONN_{CALLBACK_CONN_ID.upper()}": secrets_.connection(),
            "NONTAX_RECEIVER_SPOOL": str(spool_dir),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
    )
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "wechat_nontax.cli.main", "--dsn", dsn, "receiver",
             "--host", "127.0.0.1", "--port", str(port)],
            env=child_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    proc = ReceiverProcess(popen, port, log_path, secrets_)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"the receiver exited: {proc.log_text()[-2000:]}")
        try:
            if requests.get(proc.base + "/healthz", timeout=3).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(
        f"the receiver did not answer within {timeout_s} s: {proc.log_text()[-2000:]}"
    )
