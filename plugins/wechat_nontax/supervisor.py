"""A task process's watch on its supervisor, for the operators of both pipelines.

Airflow's supervisor (a Celery pool process, the LocalExecutor's worker) reports a task try to
Airflow. When it dies, nothing reports the try, which Airflow fails and runs again: an orphan
that went on would hold its orders from the next try and send unseen.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

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
