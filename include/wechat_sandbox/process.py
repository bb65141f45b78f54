"""Run the sandbox as a subprocess in its own process group, e.g. for tests and benchmarks."""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import requests

from wechat_sandbox.client import SandboxAdmin
from wechat_sandbox.config import ENV_ADMIN_TOKEN, ENV_TOKENS_FILE

INCLUDE_DIR = Path(__file__).resolve().parent.parent


class SandboxStartError(RuntimeError):
    """The sandbox did not come up; the message carries its stderr."""


def _first_ephemeral_port() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now and below the kernel's ephemeral range. A port the kernel picks (bind to
    0) is an ephemeral one, which any client connection may take as its local end before the
    server that was meant to get it binds it (seconds later, for Airflow's api-server)."""
    below = _first_ephemeral_port()
    attempts = 200 if below > 11_000 else 0  # no room below it: let the kernel pick
    for _ in range(attempts):
        port = random.randrange(10_000, below)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class StoppedOnExit:
    """Something running that a `with` block stops again at its end, also when the body
    fails, by the subclass's `stop()`. Here, at the bottom of the harness, so that the sandbox's
    process and the harness's running things (the embedded Postgres, the stack) share one copy:
    the harness imports the sandbox, never the other way round."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SandboxProcess(StoppedOnExit):
    """A running sandbox: `.url`, `.port`, `.pid`, `.stop()`; also a context manager.
    `.admin()` is a client of its admin API, with the admin token this process was given."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        host: str,
        port: int,
        stderr_file: IO[bytes],
        admin_token: str,
        tokens_file: str,
    ) -> None:
        self.popen = popen
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.admin_token = admin_token
        self.tokens_file = tokens_file
        self._stderr_file = stderr_file
        self._stopped = False
        self._final_stderr: str | None = None
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def admin(self) -> SandboxAdmin:
        return SandboxAdmin(self.url, admin_token=self.admin_token, tokens_file=self.tokens_file)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stderr_text(self) -> str:
        """What the sandbox wrote to stdout/stderr so far (kept after stop())."""
        if self._final_stderr is not None:
            return self._final_stderr
        try:
            self._stderr_file.flush()
            self._stderr_file.seek(0)
            return self._stderr_file.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, wait, SIGKILL if still alive. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout)
        # The group may hold children even once the leader is gone.
        self._signal_group(signal.SIGKILL)
        self._final_stderr = self.stderr_text()
        with contextlib.suppress(OSError):
            self._stderr_file.close()

    def __repr__(self) -> str:
        return f"SandboxProcess(url={self.url!r}, pid={self.pid})"


def _launch(port: int, host: str, env: Mapping[str, str] | None) -> SandboxProcess:
    child_env = dict(os.environ)
    # Its admin token, and where it lists the tokens it issues (for a harness scanning logs):
    # a directory of this process's owner only.
    if env:
        child_env.update(env)
    child_env.setdefault(ENV_ADMIN_TOKEN, secrets.token_urlsafe(24))
    if not child_env.get(ENV_TOKENS_FILE):
        child_env[ENV_TOKENS_FILE] = os.path.join(tempfile.mkdtemp(prefix="wechat-sandbox-"), "t")
    paths = [str(INCLUDE_DIR)]
    if child_env.get("PYTHONPATH"):
        paths.append(child_env["PYTHONPATH"])
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    child_env["PYTHONUNBUFFERED"] = "1"
    stderr_file = tempfile.TemporaryFile(prefix="wechat-sandbox-stderr-")  # noqa: SIM115
    popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "wechat_sandbox", "--host", host, "--port", str(port)],
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=stderr_file,
        stderr=stderr_file,
        start_new_session=True,
    )
    return SandboxProcess(
        popen, host, port, stderr_file, child_env[ENV_ADMIN_TOKEN], child_env[ENV_TOKENS_FILE]
    )


def _wait_ready(proc: SandboxProcess, timeout: float) -> str | None:
    """None once /_sandbox/health answers, else why not."""
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while time.monotonic() < deadline:
            if not proc.alive():
                return f"the sandbox exited with status {proc.popen.returncode}"
            try:
                if session.get(f"{proc.url}/_sandbox/health", timeout=1).status_code == 200:
                    return None
            except requests.RequestException:
                pass
            time.sleep(0.05)
    return f"the sandbox did not answer within {timeout} s"


def start_sandbox(
    port: int | None = None,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    timeout: float = 20,
) -> SandboxProcess:
    """Start `python -m wechat_sandbox` and wait until it answers; port None picks a free one."""
    attempts = 3 if port is None else 1
    problem = ""
    for _ in range(attempts):
        proc = _launch(port if port is not None else free_port(host), host, env)
        reason = _wait_ready(proc, timeout)
        if reason is None:
            return proc
        proc.stop()
        problem = f"{reason}; its output:\n{proc.stderr_text()}"
        if "address already in use" not in problem.lower():
            break
    raise SandboxStartError(problem)
