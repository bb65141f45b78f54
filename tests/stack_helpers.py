"""What the stack tests share: a stack of `nontax_dev.stack` of the module's own (free ports,
databases of its own that `down` drops, no scheduled run), always stopped again."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from nontax_dev.stack.config import StackConfig
from nontax_dev.stack.stack import Stack
from wechat_sandbox.process import free_port

TEST_PG = os.environ.get("NONTAX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CHROMIUM = os.environ.get("NONTAX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def own_stack_config(state: Path, name: str, **overrides: Any) -> StackConfig:
    """A StackConfig for a test module; `overrides` are StackConfig fields (`extra_env` adds)."""
    suffix = uuid.uuid4().hex[:8]
    # Schedules whose latest tick is before the DAGs' start date: unpausing a DAG does not
    # start a scheduled run that would claim the test's orders or requests.
    never = "0 0 29 2 *"
    extra_env = {
        "NONTAX_SCHEDULE": never,
        "NONTAX_REQUESTS_SCHEDULE": never,
        "NONTAX_WAITING_SCHEDULE": never,
        **overrides.pop("extra_env", {}),
    }
    settings: dict[str, Any] = {
        "state_dir": state,
        "port": free_port(),
        "pg_server": TEST_PG,
        "meta_db_name": f"airflow_meta_{name}_{suffix}",
        "orders_db_name": f"nontax_stack_{name}_{suffix}",
        "sandbox_port": None,
        "pdf_root": state / "pdfs",
        "worker_log_port": free_port(),
        "scheduler_health_port": free_port(),
        "drop_databases_on_down": True,
        "extra_env": extra_env,
    }
    return StackConfig(**{**settings, **overrides})


@contextlib.contextmanager
def running(config: StackConfig) -> Iterator[Stack]:
    """The stack up, and down again whatever happens, with nothing of it left running."""
    stack = Stack(config)
    try:
        stack.up()
        print(f"stack up in {stack.started_in_s}s on {stack.url}")
        yield stack
    finally:
        left = stack.down()
        assert left == [], f"processes of the stack survived `down`: {left}"
        assert stack.processes() == []


def run_in(stack: Stack, command: list[str]) -> str:
    """Run a command with the stack's environment (as its processes have it); its output."""
    done = subprocess.run(
        command, env=stack.env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@contextlib.contextmanager
def logged_in_page(
    stack: Stack,
    next_path: str = "/",
    *,
    username: str = "admin",
    password: str | None = None,
    **browser_context: Any,
) -> Iterator[Any]:
    """A headless Chromium page (Playwright) that has just signed in to the stack's UI as
    `username` (`admin` with the stack's password by default), on its way to `next_path`;
    `browser_context` are Playwright's (time zone, color scheme...). Skips the test where there
    is no Chromium."""
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if executable is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                **{"viewport": {"width": 1600, "height": 1000}, **browser_context}
            )
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{stack.url}/auth/login?next={quote(next_path, safe='')}")
            page.get_by_label("Username").fill(username)
            page.get_by_label("Password").fill(password or stack.password)
            page.get_by_role("button", name="Sign in").click()
            yield page
        finally:
            browser.close()


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port, nothing on disk (`--save ''
    --appendonly no`), in a process group of its own: the one Redis a test may restart. The
    machine's shared Redis (6379) is never touched."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.popen: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        import redis

        self.popen = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    assert self.popen.poll() is None, "redis-server exited at start"
                    assert time.monotonic() < deadline, "redis-server did not answer in 20 s"
                    time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGKILL its process group, as when the machine loses its Redis."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self.popen = None

    def restart(self) -> None:
        """Stopped and started again on the same port: empty, as a Redis that keeps nothing."""
        self.stop()
        self.start()

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
