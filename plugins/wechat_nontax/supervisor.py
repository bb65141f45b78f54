"""A task process's watch on its supervisor, for the operators of both pipelines.

Airflow's supervisor (a Celery pool process, the LocalExecutor's worker) reports a task try to
Airflow. When it dies, nothing reports the try, which Airflow fails and runs again: an orphan
that went on would hold its orders from the next try and send unseen.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Protocol

# How often a task process looks whether its supervisor is still there.
SUPERVISOR_CHECK_S = 1.0


def watch_supervisor(
    on_gone: Callable[[str], None],
    *,
    parent: int | None = None,
    every_s: float = SUPERVISOR_CHECK_S,
) -> threading.Event:
    """Call `on_gone(reason)` once if this process's parent, the task's supervisor, exits before
    the returned event is set. Its parent's death shows as a new parent id (the orphan is
    adopted by an init or a subreaper); `parent` is the one this process had when the task
    started (default: now)."""
    parent = os.getppid() if parent is None else parent
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every_s):
            if os.getppid() != parent:
                on_gone(f"not sent: the task's supervisor (pid {parent}) is gone")
                return

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
    return done


class Stoppable(Protocol):
    def stop(self, reason: str) -> None: ...


class TryStop:
    """What stops a task try's work (an issuing batch, a requests runner): Airflow killing the
    task (`on_kill`) or its supervisor gone (`watch_supervisor`), also before the work was
    made (`attach` then stops it at once). Called from a signal handler or the watch's thread:
    no lock is taken."""

    def __init__(self) -> None:
        self._work: Stoppable | None = None
        self._gone: str | None = None

    def attach(self, work: Stoppable) -> None:
        self._work = work
        if self._gone is not None:  # gone before the work was there to stop
            work.stop(self._gone)

    def supervisor_gone(self, reason: str) -> None:
        # Airflow no longer sees this try (it fails it and runs the next one): send nothing
        # more, record the calls in flight and end the hold, so that the next try takes over.
        self._gone = reason
        if self._work is not None:
            self._work.stop(reason)

    def killed(self) -> None:
        # Airflow stops the task (marked in the UI, a timeout, a worker shutting down): send
        # nothing more and let the calls in flight be recorded before the process ends.
        if self._work is not None:
            self._work.stop("not sent: the task was stopped")
