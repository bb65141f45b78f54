"""A task process's watch on its supervisor, with real processes: a "supervisor" process
starts a "task" process that watches it; the supervisor is SIGKILLed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

# The marker is written whole, then renamed into place: the test waits for it to exist and must
# never read it half written.
TASK = """
import os, sys, time
from pathlib import Path
from wechat_nontax.supervisor import watch_supervisor
marker = sys.argv[1]
def tell(reason):
    Path(marker + ".part").write_text(reason)
    os.replace(marker + ".part", marker)
watch_supervisor(tell, every_s=0.1)
print("watching", flush=True)
time.sleep(60)
"""
SUPERVISOR = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(60)
"""


def test_a_task_process_is_told_when_its_supervisor_dies(tmp_path: Path):
    marker = tmp_path / "gone"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, TASK, str(marker)],
        env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert supervisor.stdout is not None
        assert supervisor.stdout.readline().strip() == "watching"
        time.sleep(0.5)
        assert not marker.exists(), "told while its supervisor lives"
        supervisor.kill()
        supervisor.wait(10)
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == (
            f"not sent: the task's supervisor (pid {supervisor.pid}) is gone"
        )
    finally:
        # The task process is still in the supervisor's process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor.pid, signal.SIGKILL)


class _Work:
    def __init__(self) -> None:
        self.stopped: list[str] = []

    def stop(self, reason: str) -> None:
        self.stopped.append(reason)


def test_a_try_stop_reaches_the_work_made_after_the_supervisor_went_and_a_kill():
    from wechat_nontax.supervisor import TryStop

    early, late = TryStop(), TryStop()
    early.supervisor_gone("not sent: the task's supervisor (pid 1) is gone")
    work = _Work()
    early.attach(work)  # made after the supervisor went: stopped at once
    assert work.stopped == ["not sent: the task's supervisor (pid 1) is gone"]
    late.killed()  # nothing to stop yet
    other = _Work()
    late.attach(other)
    assert other.stopped == []
    late.killed()
    assert other.stopped == ["not sent: the task was stopped"]
