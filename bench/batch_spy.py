"""Where a batch's CPU goes inside Airflow: py-spy on the live issue_bills task processes of a run.

`bench/batch_cpu.py` profiles a batch outside Airflow; in a real run the same batch costs more
per order (`make bench`'s `batch` role against it). This starts the LocalExecutor stack of
`make bench` (its settings, its sandbox latency), loads N orders, triggers one run and records
every task process of it with `py-spy record --gil` (samples only while a thread holds the
interpreter: CPU) until the process ends. The batches' samples together, ranked by function: the
share of the batches' CPU spent in a function and what it calls (inclusive) and in the function
itself (own), each also as ms per order from the run's measured `batch` CPU, after the run's CPU
by role (`cpu_account`: the batches, the order database's server processes, Airflow's). Written to
bench/batch_spy.txt. With `--executor celery` the same on the Celery stack of `make bench` (its
workers' task processes, below each `airflow celery worker`'s pool), written to
bench/batch_spy_celery.txt.

    PYTHONPATH=include:dags AIRFLOW_HOME=.airflow .venv/bin/python bench/batch_spy.py \
        [--orders 10000] [--executor local|celery]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from wechat_nontax.settings import ISSUE_TASK_ID

BENCH = Path(__file__).resolve().parent
PY_SPY = Path(sys.executable).with_name("py-spy")
LINE = re.compile(r":\d+\)$")


def function_of(frame: str) -> str:
    """ "name (path/file.py:123)" -> "name (path/file.py)": a function's lines counted together."""
    return LINE.sub(")", frame)


def collapsed_shares(lines: list[str]) -> tuple[Counter, Counter, int]:
    """py-spy's raw (collapsed) stacks, "frame;frame;... count": samples per function, inclusive
    (once per stack however often it recurs) and own (the innermost frame), and the total."""
    inclusive: Counter = Counter()
    own: Counter = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [function_of(f) for f in stack.split(";") if not f.startswith("process ")]
        samples = int(count)
        total += samples
        for frame in set(frames):
            inclusive[frame] += samples
        if frames:
            own[frames[-1]] += samples
    return inclusive, own, total


def report(inclusive: Counter, own: Counter, total: int, breakdown: dict, top: int) -> str:
    ms_per_order = breakdown["roles"].get("batch", {}).get("ms_per_order", 0.0)
    out = [f"{total} samples (CPU) of the run's batches; {ms_per_order:.3f} ms per order in all",
           "", "== the run's CPU by role (ms per order) =="]  # fmt: skip
    out += [f"{entry['ms_per_order']:9.3f}  {role} ({entry['processes']} processes)"
            for role, entry in breakdown["roles"].items()]  # fmt: skip
    out.append("")
    for title, counts in (("inclusive (the function and what it calls)", inclusive),
                          ("own (the function itself)", own)):  # fmt: skip
        out.append(f"== by {title} ==")
        out.append(f"{'share':>7} {'ms/order':>9}  function")
        for frame, samples in counts.most_common(top):
            share = samples / total
            out.append(f"{share:7.1%} {share * ms_per_order:9.3f}  {frame}")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--top", type=int, default=70)
    parser.add_argument("--executor", choices=("local", "celery"), default="local")
    parser.add_argument("--out", type=Path, help="default: bench/batch_spy[_celery].txt")
    args = parser.parse_args()
    celery = args.executor == "celery"
    out = args.out or BENCH / ("batch_spy_celery.txt" if celery else "batch_spy.txt")

    from cpu_account import TASK_TITLE, read_title
    from nontax_dev.stack.stack import Stack
    from run import cpu_tracker, load_orders, stack_configs

    local, on_celery = stack_configs(BENCH.parent / ".run" / "bench-spy", pool_slots=4,
                                     celery_workers=2 if celery else 0)  # fmt: skip
    config = on_celery if celery else local
    conf = {"batch_size": 2500, "min_batches": 4, "workers": 16}
    spies: dict[int, tuple[subprocess.Popen, Path]] = {}
    with Stack(config, say=print) as stack:
        stack.sandbox_admin().add_fault(endpoint="*", kind="latency", latency_ms=args.latency_ms)
        load_orders(stack.orders_dsn, stack.pdf_root, "SPY", args.orders)
        # Where its task processes run: below the scheduler's LocalExecutor workers (and with
        # `mp_start_method = forkserver` below the forkserver too), or below the Celery workers'
        # pool processes.
        runs_tasks = {"scheduler", *(p.name for p in stack.workers())}
        parents = [psutil.Process(p.pid) for p in stack.state.procs if p.name in runs_tasks]
        raw = config.state_dir / "spy"
        raw.mkdir()
        try:
            with cpu_tracker(stack) as cpu:
                run_id = stack.api.trigger(conf)
                while stack.api.run(run_id)["state"] not in ("success", "failed"):
                    below = [c for parent in parents for c in parent.children(recursive=True)]
                    for process in below:
                        pid = process.pid
                        if pid in spies or not TASK_TITLE.search(read_title(process) or ""):
                            continue
                        path = raw / f"{pid}.txt"
                        command = [str(PY_SPY), "record", "--pid", str(pid), "--gil",
                                   "--nonblocking", "--format", "raw",
                                   "--output", str(path)]  # fmt: skip
                        spies[pid] = (
                            subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.STDOUT),
                            path,
                        )  # fmt: skip
                    time.sleep(0.2)
            instances = stack.api.task_instances(run_id)
        finally:
            for popen, _ in spies.values():
                try:
                    popen.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait()
        task_ids = {ti["id"]: ti["task_id"] for ti in instances}
        breakdown = cpu.report(task_ids, args.orders)
    batch_ids = {i for i, task in task_ids.items() if task == ISSUE_TASK_ID}
    lines: list[str] = []
    for pid, (_, path) in spies.items():
        # py-spy copies names out of the live process's memory: a string read mid-change is not
        # always UTF-8 (one sample's frame then reads garbled, the rest are whole).
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        track = next((t for t in cpu.tracks.values() if t.pid == pid), None)
        ti = TASK_TITLE.search(track.title) if track else None
        if ti and ti.group(1) in batch_ids:
            lines += text.splitlines()
    inclusive, own, total = collapsed_shares(lines)
    out.write_text(report(inclusive, own, total, breakdown, args.top), encoding="utf-8")
    print(f"{len(spies)} task processes recorded; batches: {total} samples; written {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    sys.exit(main())
