"""The stack's processes: each started in a session (and so a process group) of its own and
recorded; found again from another process (`make down`), stopped, and checked gone.

Every process of a stack carries MARKER in its environment, so that what left the groups (a
task process in a group of its own) is found too."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nontax_dev.airflow_run import ROOT
from nontax_dev.stack import StackError

MARKER = "NONTAX_STACK_ID"


@dataclass
class Proc:
    """A process the stack started: the leader of its own session and process group."""

    name: str
    pid: int
    create_time: float
    log: str

    def process(self):
        """The live psutil.Process, or None when it is gone (or the pid was reused)."""
        import psutil

        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.create_time) > 1.0 or p.status() == "zombie":
                return None
            return p
        except psutil.Error:
            return None


# -- starting ------------------------------------------------------------------------------------


def spawn(name: str, command: list[str], env: dict[str, str], log: Path) -> Proc:
    """Start a long-running process in a session of its own, its output appended to `log`."""
    import psutil

    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        popen = _start(command, env, out)
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.Error:
        create_time = time.time()
    return Proc(name, popen.pid, create_time, str(log))


def run_in_background(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A one-off command (migrate, pools set), output to its log, in its own group."""
    with open(log, "wb") as out:
        return _start(command, env, out)


def _start(command: list[str], env: dict[str, str], out: BinaryIO) -> subprocess.Popen:
    """In a session (and so a process group) of its own, from the checkout, its output (stderr
    too) to `out`."""
    return subprocess.Popen(
        command, env=env, cwd=ROOT, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip


def finish(name: str, popen: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait for a one-off command; StackError, with its log's end, when it fails or hangs."""
    try:
        code = popen.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        raise StackError(f"{name} took longer than {timeout:.0f}s; {log}:\n{tail(log)}") from None
    if code != 0:
        raise StackError(f"{name} failed (exit {code}); {log}:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# -- finding -------------------------------------------------------------------------------------


def _marked(stack_id: str) -> list:
    """Every live process whose environment carries this stack's marker."""
    import psutil

    found = []
    me = os.getpid()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if p.status() == "zombie":
                continue
            environ = p.environ()
        except psutil.Error:
            continue
        if environ.get(MARKER) == stack_id:
            found.append(p)
    return found


def stack_processes(stack_id: str, procs: list[Proc]) -> list:
    """The live processes of a stack: its leaders, their descendants, and every marked one."""
    import psutil

    seen: dict[int, Any] = {}
    for proc in procs:
        leader = proc.process()
        if leader is None:
            continue
        seen[leader.pid] = leader
        with contextlib.suppress(psutil.Error):
            for child in leader.children(recursive=True):
                seen.setdefault(child.pid, child)
    for p in _marked(stack_id):
        seen.setdefault(p.pid, p)
    return [p for p in seen.values() if _alive(p)]


# -- stopping ------------------------------------------------------------------------------------


def stop_processes(
    stack_id: str, procs: list[Proc], *, grace_s: float, say: Callable[[str], None]
) -> list[str]:
    """SIGTERM every process group, wait, SIGKILL the rest. Returns a description of every
    process still alive after that."""
    processes = stack_processes(stack_id, procs)
    if processes:
        say(f"stopping {len(processes)} processes (SIGTERM, then SIGKILL after {grace_s:.0f}s)")
        _signal_all(processes, procs, signal.SIGTERM)
        alive = _wait_gone(processes, grace_s)
        # Whatever started meanwhile (a task process spawned late) is caught by the marker.
        alive += [p for p in stack_processes(stack_id, procs) if p not in alive]
        if alive:
            names = ", ".join(sorted({_name(p) for p in alive}))
            say(f"{len(alive)} processes still alive after {grace_s:.0f}s ({names}): SIGKILL")
            _signal_all(alive, procs, signal.SIGKILL)
            _wait_gone(alive, 10)
    return [f"{p.pid} {_name(p)}" for p in stack_processes(stack_id, procs) if _alive(p)]


def _signal_all(processes: list, procs: list[Proc], sig: int) -> None:
    """Signal each live leader's process group, then every other process once: a second
    SIGTERM while the scheduler shuts its LocalExecutor down makes it hang."""
    import psutil

    groups = set()
    for proc in procs:
        if proc.process() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
                groups.add(proc.pid)
    for p in processes:
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if sig == signal.SIGTERM and os.getpgid(p.pid) in groups:
                continue
            p.send_signal(sig)


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def command_of(process: Any) -> str:
    """A process's command line as one line (Airflow's and Postgres's processes put their title
    there); "" for one that ended meanwhile (a task process exits at any time, and is a zombie
    until its parent reaps it)."""
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _name(p) -> str:
    import psutil

    try:
        return command_of(p)[:60] or p.name()
    except psutil.Error:
        return str(p.pid)


def _wait_gone(processes: list, timeout: float) -> list:
    """Wait until every process is gone (a zombie counts as gone); returns those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in processes if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)
