"""`python -m nontax_dev.chaos` (`make chaos`): the runs, their table and summary; exit 1 on any
violation, 130 when interrupted."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import nontax_dev.chaos
from nontax_dev.airflow_run import ROOT
from nontax_dev.chaos.plan import plan_run
from nontax_dev.chaos.report import HEAD, LEGEND, RunResult, Summary, format_row
from nontax_dev.chaos.runner import Chaos
from nontax_dev.pg import LOCAL_SERVER


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[IO[str]]:
    """Send this process's stdout/stderr (Airflow's console) to `path`; yield the real stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        yield out
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        out.close()


_STOP = threading.Event()


def _request_stop(signum: int, frame: Any) -> None:
    _STOP.set()
    raise KeyboardInterrupt


def run_chaos(
    runs: int,
    seed: int,
    *,
    pg: str = LOCAL_SERVER,
    workdir: Path | None = None,
    rerun_rounds: int = 2,
    min_orders: int = 16,
    max_orders: int = 32,
    first_run: int = 0,
    out: IO[str] | None = None,
) -> Summary:
    """Run the chaos in this process; prints the table to `out`; returns the summary."""
    for path in ("include", "dags"):
        if str(ROOT / path) not in sys.path:
            sys.path.insert(0, str(ROOT / path))
    workdir = (
        workdir or ROOT / ".airflow" / "chaos" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: list[RunResult] = []
    log_path = workdir / "airflow-output.log"
    with _output_to(log_path) as real_out:
        out = out or real_out
        print(f"chaos: {runs} runs, seed {seed}; Airflow's output: {log_path}", file=out)
        with Chaos(pg=pg, workdir=workdir) as chaos:
            print(f"order database {chaos.db_name}, sandbox {chaos.sandbox_process.url}", file=out)
            print(LEGEND, file=out)
            print(HEAD, file=out)
            for run in range(first_run, first_run + runs):
                # Airflow's task runner swallows a Ctrl-C inside a task (the task fails) and
                # takes SIGTERM over: ask for a stop, and stop after the run.
                signal.signal(signal.SIGINT, _request_stop)
                signal.signal(signal.SIGTERM, _request_stop)
                if _STOP.is_set():
                    break
                plan = plan_run(seed, run, min_orders=min_orders, max_orders=max_orders)
                result = chaos.run(plan, rerun_rounds=rerun_rounds)
                if _STOP.is_set():
                    print(f"interrupted during run {run}: not counted", file=out)
                    break
                results.append(result)
                print(format_row(result), file=out)
                for violation in result.violations:
                    print(f"       ! {violation}", file=out)
                if result.violations:
                    print(f"       (again: --seed {seed} --first-run {run} --runs 1)", file=out)
            task_log_hits = chaos.scan_task_logs()
        if task_log_hits:
            print(f"       ! {task_log_hits} secret occurrences in Airflow's task logs", file=out)
        summary = Summary.of(
            results,
            task_log_hits=task_log_hits,
            seconds=time.monotonic() - started,
            interrupted=_STOP.is_set(),
        )
        print(summary, file=out)
        if not summary.violations:  # keep the output and the summary; the rest only for a look
            for scratch in ("pdfs", "airflow"):
                shutil.rmtree(workdir / scratch, ignore_errors=True)
        summary.write_json(workdir / "summary.json", seed)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nontax_dev.chaos", description=nontax_dev.chaos.__doc__
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--runs", type=int, default=int(os.environ.get("RUNS", 200)))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SEED", 1)))
    parser.add_argument(
        "--first-run", type=int, default=0, help="start at this run (repeat one: --runs 1)"
    )
    parser.add_argument("--rerun-rounds", type=int, default=2)
    parser.add_argument("--min-orders", type=int, default=16)
    parser.add_argument("--max-orders", type=int, default=32)
    parser.add_argument(
        "--pg",
        default=os.environ.get("NONTAX_TEST_PG", LOCAL_SERVER),
        help="a Postgres server where a database may be created (default: NONTAX_TEST_PG, "
        "else the local server)",
    )
    parser.add_argument("--workdir", type=Path, help="where logs and PDFs go")
    args = parser.parse_args(argv)
    try:
        summary = run_chaos(
            args.runs,
            args.seed,
            pg=args.pg,
            workdir=args.workdir,
            rerun_rounds=args.rerun_rounds,
            min_orders=args.min_orders,
            max_orders=args.max_orders,
            first_run=args.first_run,
        )
    except KeyboardInterrupt:
        print("chaos: interrupted (the sandbox and the order database are cleaned up)")
        return 130
    if summary.interrupted:
        return 130
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
