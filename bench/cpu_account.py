"""CPU per order, by whom it is spent: the processes' own CPU accounting over a measured run.

A `CpuTracker` reads, through psutil, the CPU times of a stack's processes (its leaders and all
their descendants) and of the Postgres server processes of the stack's two databases, once before
the run is triggered, every `interval_s` while it goes, and once after it ended. Each reading
gives a process's own CPU (`cpu_times()`: user + system, all its threads) and what its children
that exited and were reaped used (children_user + children_system). A process is its pid and its
start time (a psutil `Process` is equal to another only when both are): a reused pid is a new
process. A process's CPU in the window is its last reading minus its first (or its whole last
reading when it started inside the window). What a process used between its last reading and
its exit (the tail) shows up in its parent's children counter: the parent's growth in that
counter, less what its reaped children had used at their last readings, is given to those
children (in proportion to what each used), or, when no child of it was seen to go, to the
parent itself (a child that lived between two readings). Postgres backends are children of the
postmaster, which serves other databases too: an exited backend's tail is not recovered (it
counts up to its last reading; the figure is a lower bound by at most one interval per backend,
and the order database's connections live as long as their batch).

Roles (`role_of`): `batch` (the task processes that run issue_bills, "airflow worker -- <ti id>"
after Airflow's setproctitle), `other_tasks` (the run's other task processes), `supervisors`
(LocalExecutor's worker processes and Celery's pool processes: each runs a task's supervisor),
`scheduler`, `api_server`, `dag_processor`, `triggerer`, `log_server`, `celery_workers` (the
`airflow celery worker` main processes), `sandbox`, `receiver` (idle during a run),
`postgres_orders` and `postgres_meta` (the server processes connected to the order and the
metadata database).

Why psutil: the harness reads processes with it already (the stack's, the workers' memory in
bench/run.py), and it carries what a reader of /proc/<pid>/stat must get right: a command name
that holds spaces or parentheses, clock ticks to seconds, a process gone between the listing and
the read, and a process's identity, its pid and start time, checked on every sweep. That check
costs: psutil makes a second `Process` for each process to compare start times, and a sweep
takes about 2.5 times the CPU of the stat line parsed by hand (25 ms against 9 for 170
processes on 2 cores). What psutil does not do is the hard part, the tails of exited processes
(`used`): that arithmetic (`Track`, `used`, `role_of`, `breakdown`) is pure and tested in
tests/unit; the reading is `read_stats`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import psutil

from nontax_dev.stack.processes import command_of
from wechat_nontax.settings import ISSUE_TASK_ID

# A task process after Airflow's setproctitle: "airflow worker -- <task instance id>".
TASK_TITLE = re.compile(r"airflow worker -- ([0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})")
FORKSERVER = "from multiprocessing.forkserver import main"
# "postgres: [<cluster>: ]<user> <database> <client> <state>", the title Postgres gives each
# backend, and "postgres: [<cluster>: ]autovacuum worker <database>" (the vacuum after a run's
# updates is the database's work too).
BACKEND_TITLE = re.compile(
    r"^postgres: (?:\S+: )?(?:autovacuum worker (\S+)|(?!autovacuum )\S+ (\S+) \S)"
)
# The pipeline's CPU per order: what the batches spend, and the order database's server processes
# that answer them, set against the raw client's own CPU (`cpu_pipeline_vs_ceiling`).
PIPELINE_ROLES = ("batch", "postgres_orders")
AIRFLOW_ROLES = ("other_tasks", "supervisors", "scheduler", "api_server", "dag_processor",
                 "triggerer", "log_server", "celery_workers", "postgres_meta")  # fmt: skip
LEADER_ROLES = {"api-server": "api_server", "scheduler": "scheduler",
                "dag-processor": "dag_processor", "triggerer": "triggerer",
                "log-server": "log_server", "sandbox": "sandbox",
                "receiver": "receiver"}  # fmt: skip


@dataclass(frozen=True)
class Stat:
    """One reading of a process: CPU in seconds."""

    process: psutil.Process  # equal to another only with the same pid and start time
    ppid: int
    own: float  # user + system
    children: float  # children_user + children_system: reaped children, theirs included

    @property
    def pid(self) -> int:
        return self.process.pid


# What a track is known by: a psutil.Process in a sweep; anything hashable in the arithmetic.
Key = TypeVar("Key", bound=Hashable)


@dataclass
class Track:
    """What the readings said about one process during the window."""

    pid: int
    ppid: int
    title: str
    born_in_window: bool
    first_own: float
    first_children: float
    last_own: float
    last_children: float
    gone: bool = False
    role: str = ""
    group: str = ""  # what it belongs to: the stack leader's name, or "postgres"
    depth: int = 0  # below its stack leader: 0 the leader, 1 its child...

    def observe(self, stat: Stat, title: str | None) -> None:
        self.last_own, self.last_children = stat.own, stat.children
        if title:
            self.title = title

    @property
    def own_used(self) -> float:
        return self.last_own - (0.0 if self.born_in_window else self.first_own)

    @property
    def children_used(self) -> float:
        return self.last_children - (0.0 if self.born_in_window else self.first_children)


def used(tracks: Mapping[Key, Track]) -> dict[Key, float]:
    """Each process's CPU seconds in the window, the tails of exited ones included (see the
    module's docstring)."""
    result = {key: max(0.0, t.own_used) for key, t in tracks.items()}
    by_pid = {t.pid: key for key, t in tracks.items() if not t.gone}
    reaped: dict[Key, list[Key]] = {}
    for key, t in tracks.items():
        parent = by_pid.get(t.ppid)
        if t.gone and parent is not None:
            reaped.setdefault(parent, []).append(key)
    for parent, track in tracks.items():
        if track.group == "postgres":
            continue  # the postmaster is not tracked; a backend reaps nothing of ours
        children = reaped.get(parent, [])
        # The counter holds a reaped child's whole life: what it had used before the window too.
        explained = sum(tracks[c].last_own + tracks[c].last_children for c in children)
        tail = track.children_used - explained
        if tail <= 0:
            continue
        if not children:
            result[parent] += tail
            continue
        weights = [result[c] for c in children]
        total = sum(weights)
        for child, weight in zip(children, weights, strict=True):
            result[child] += tail * (weight / total if total > 0 else 1 / len(children))
    return result


def _is_forkserver(process: psutil.Process) -> bool:
    return FORKSERVER in (read_title(process) or "")


def role_of(title: str, group: str, depth: int, task_ids: Mapping[str, str],
            databases: Mapping[str, str]) -> str:  # fmt: skip
    """A process's role from its title, its stack leader's name (or "postgres") and how far
    below that leader it is; `task_ids` maps task instance ids to task ids, `databases` database
    names to roles."""
    if group == "postgres":
        match = BACKEND_TITLE.match(title)
        return databases.get(match.group(1) or match.group(2), "") if match else ""
    task = TASK_TITLE.search(title)
    if task:
        return "batch" if task_ids.get(task.group(1)) == ISSUE_TASK_ID else "other_tasks"
    is_worker = group.startswith("worker-")
    if depth >= 2 and (group == "scheduler" or is_worker):
        return "other_tasks"  # a task process seen before it named itself: a short task
    if depth == 1 and (group == "scheduler" or is_worker):
        return "supervisors"  # LocalExecutor's workers, Celery's pool: each supervises a task
    if is_worker:
        return "celery_workers"
    return LEADER_ROLES.get(group, "other")


def breakdown(tracks: Mapping[Hashable, Track], orders: int) -> dict:
    """CPU by role (seconds, ms per order, processes seen), and the pipeline's and Airflow's
    sums."""
    seconds = used(tracks)
    roles: dict[str, dict] = {}
    for key, track in tracks.items():
        if not track.role:
            continue
        entry = roles.setdefault(track.role, {"cpu_s": 0.0, "processes": 0})
        entry["cpu_s"] += seconds[key]
        entry["processes"] += 1
    for entry in roles.values():
        entry["ms_per_order"] = round(entry["cpu_s"] * 1000 / orders, 3)
        entry["cpu_s"] = round(entry["cpu_s"], 2)

    def per_order(names: Iterable[str]) -> float:
        return round(sum(roles.get(n, {}).get("cpu_s", 0.0) for n in names) * 1000 / orders, 3)

    ordered = dict(sorted(roles.items(), key=lambda item: -item[1]["cpu_s"]))
    return {
        "cpu_ms_per_order_pipeline": per_order(PIPELINE_ROLES),
        "cpu_ms_per_order_airflow": per_order(AIRFLOW_ROLES),
        "cpu_ms_per_order_sandbox": per_order(["sandbox"]),
        "cpu_ms_per_order_all": per_order(ordered),
        "roles": ordered,
    }


def mean_roles(reports: list[dict]) -> dict[str, float]:
    """Several runs' breakdowns: each role's mean ms per order (a role a run lacks counts 0)."""
    names = {name for report in reports for name in report["roles"]}
    means = {
        name: round(sum(r["roles"].get(name, {}).get("ms_per_order", 0.0) for r in reports)
                    / len(reports), 3)
        for name in names
    }  # fmt: skip
    return dict(sorted(means.items(), key=lambda item: -item[1]))


# -- reading the processes -------------------------------------------------------------------------


def read_stats() -> dict[int, Stat]:
    """Every process's reading (a process gone meanwhile is left out). psutil keeps one
    `Process` per pid between calls; its `ppid()` checks that the pid was not reused meanwhile
    and has the cached one dropped when it was, so a process that took a pid over is read as
    itself from the next sweep on."""
    stats = {}
    for process in psutil.process_iter(["ppid", "cpu_times"]):
        times = process.info["cpu_times"]
        if times is None:  # access denied
            continue
        stats[process.pid] = Stat(
            process=process,
            ppid=process.info["ppid"],
            own=times.user + times.system,
            children=times.children_user + times.children_system,
        )
    return stats


def read_title(process: psutil.Process) -> str | None:
    """Its command line as one line: the title Airflow's and Postgres's processes give
    themselves."""
    return command_of(process).strip() or None


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (all but idle and iowait)."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def own_cpu_s(pid: int) -> float | None:
    """One process's own CPU seconds (all its threads), or None when it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


class CpuTracker:
    """`with CpuTracker(leaders, postmaster, databases) as cpu:` around a run; then
    `cpu.report(task_ids, orders)`. `leaders` maps the stack's leader pids to their names,
    `databases` the database names whose Postgres backends count to their roles."""

    def __init__(self, leaders: Mapping[int, str], postmaster: int | None,
                 databases: Mapping[str, str], interval_s: float = 0.5) -> None:  # fmt: skip
        self.leaders = dict(leaders)
        self.postmaster = postmaster
        self.databases = dict(databases)
        self.interval_s = interval_s
        self.tracks: dict[psutil.Process, Track] = {}
        self.sweeps = 0
        self._first = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-tracker", daemon=True)
        self.machine_s = 0.0
        # What its thread's sweeps cost: CPU of the process that runs the tracker, which a caller
        # measuring its own CPU meanwhile (bench/batch_cpu.py) takes off.
        self.reading_s = 0.0

    def sweep(self) -> None:
        stats = read_stats()
        children: dict[int, list[int]] = {}
        for stat in stats.values():
            children.setdefault(stat.ppid, []).append(stat.pid)
        seen: dict[psutil.Process, tuple[Stat, str, int]] = {}
        for leader, name in self.leaders.items():
            todo = [(leader, 0)]
            while todo:
                pid, depth = todo.pop()
                stat = stats.get(pid)
                if stat is not None:
                    seen[stat.process] = (stat, name, depth)
                    # A forkserver (`[scheduler] mp_start_method = forkserver`) stands
                    # between the scheduler and its LocalExecutor workers: counted as one of
                    # them, its children keep the place workers have under a forking scheduler.
                    below = depth + (0 if depth == 1 and _is_forkserver(stat.process) else 1)
                    todo += [(child, below) for child in children.get(pid, [])]
        for pid in children.get(self.postmaster, []) if self.postmaster else []:
            seen[stats[pid].process] = (stats[pid], "postgres", 1)
        for key, (stat, group, depth) in seen.items():
            track = self.tracks.get(key)
            # A Postgres backend keeps its database in its title once it has one; Airflow's
            # processes change theirs (setproctitle), so they are read again every time.
            known = track and group == "postgres" and BACKEND_TITLE.match(track.title)
            title = None if known else read_title(stat.process)
            if track is None:
                track = self.tracks[key] = Track(
                    pid=stat.pid, ppid=stat.ppid, title=title or "", born_in_window=not self._first,
                    first_own=stat.own, first_children=stat.children,
                    last_own=stat.own, last_children=stat.children, group=group,
                    depth=depth,
                )  # fmt: skip
            track.observe(stat, title)
        for key, track in self.tracks.items():
            track.gone = key not in seen
        self._first = False
        self.sweeps += 1

    def _loop(self) -> None:
        started = time.thread_time()
        while not self._stop.wait(self.interval_s):
            self.sweep()
        self.reading_s = time.thread_time() - started

    def __enter__(self) -> CpuTracker:
        self.machine_s = -machine_busy_s()
        self.sweep()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sweep()
        self.machine_s += machine_busy_s()

    def report(self, task_ids: Mapping[str, str], orders: int) -> dict:
        for track in self.tracks.values():
            track.role = role_of(track.title, track.group, track.depth, task_ids,
                                 self.databases)  # fmt: skip
        result = breakdown(self.tracks, orders)
        result["machine_cpu_ms_per_order"] = round(self.machine_s * 1000 / orders, 3)
        result["sweeps"] = self.sweeps
        return result
