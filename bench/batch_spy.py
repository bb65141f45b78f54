"""Where a batch's CPU goes inside Airflow: py-spy on the live issue_bills task processes of a run.

`bench/batch_cpu.py` profiles a batch outside Airflow; in a real run the same batch costs more
per order (`make bench`'s `batch` role against it). This starts the LocalExecutor stack of
`make bench` (its settings, its sandbox latency), loads N orders, triggers one run and records
every task process of it with `py-spy record --gil` (samples only while a thread holds the
interpreter: CPU) until the process ends. The batches' samples together, ranked by function: the
share of the batches' CPU spent in a function and what it calls (inclusive) and in the function
itself (own), each also as ms per order from the run's measured `batch` CPU. Written to
bench/batch_spy.txt.

    PYTHONPATH=include:dags AIRFLOW_HOME=.airflow .venv/bin/python bench/batch_spy.py \
        [--orders 10000]
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


def report(inclusive: Counter, own: Counter, total: int, ms_per_order: float, top: int) -> str:
    out = [f"{total} samples (CPU) of the run's batches; {ms_per_order:.3f} ms per order in all",
           ""]  # fmt: skip
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
    parser.add_argument("--out", type=Path, default=BENCH / "batch_spy.txt")
    args = parser.parse_args()

    from cpu_account import TASK_TITLE, read_title
    from nontax_dev.stack.stack import Stack
    from run import cpu_tracker, load_orders, stack_configs

    config, _ = stack_configs(BENCH.parent / ".run" / "bench-spy", pool_slots=4, celery_workers=0)
    conf = {"batch_size": 2500, "min_batches": 4, "workers": 16}
    spies: dict[int, tuple[subprocess.Popen, Path]] = {}
    with Stack(config, say=print) as stack:
        stack.sandbox_admin().add_fault(endpoint="*", kind="latency", latency_ms=args.latency_ms)
        load_orders(stack.orders_dsn, stack.pdf_root, "SPY", args.orders)
        scheduler = psutil.Process(next(p.pid for p in stack.state.procs if p.name == "scheduler"))
        raw = config.state_dir / "spy"
        raw.mkdir()
        try:
            with cpu_tracker(stack) as cpu:
                run_id = stack.api.trigger(conf)
                while stack.api.run(run_id)["state"] not in ("success", "failed"):
                    # Its task processes: below a LocalExecutor worker, and with
                    # `mp_start_method = forkserver` below the forkserver too.
                    for process in scheduler.children(recursive=True):
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
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        track = next((t for t in cpu.tracks.values() if t.pid == pid), None)
        ti = TASK_TITLE.search(track.title) if track else None
        if ti and ti.group(1) in batch_ids:
            lines += text.splitlines()
    inclusive, own, total = collapsed_shares(lines)
    ms = breakdown["roles"].get("batch", {}).get("ms_per_order", 0.0)
    args.out.write_text(report(inclusive, own, total, ms, args.top), encoding="utf-8")
    print(f"{len(spies)} task processes recorded; batches: {total} samples; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    sys.exit(main())
