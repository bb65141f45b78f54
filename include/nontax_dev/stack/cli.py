"""The commands of `python -m nontax_dev.stack` (`make up`, `make down`): up, down, status,
and what they print."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

from nontax_dev.airflow_api import DAG_ID, AirflowApi, AirflowApiError
from nontax_dev.airflow_run import REQUESTS_DAG_ID, ROOT, WAITING_DAG_ID
from nontax_dev.stack import StackError, celery_workers
from nontax_dev.stack.config import DEFAULT_STATE_DIR, StackConfig
from nontax_dev.stack.environment import ADMIN_USER
from nontax_dev.stack.health import HEALTH_COMPONENTS
from nontax_dev.stack.processes import stack_processes
from nontax_dev.stack.records import Secrets, StackState
from nontax_dev.stack.stack import Stack, stop_stack

# The DAGs that keep the daily one's promises between its runs.
FREQUENT_DAG_IDS = (REQUESTS_DAG_ID, WAITING_DAG_ID)


def _rel(path: Path | str) -> str:
    path = Path(path)
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


def _is_up(state: StackState | None) -> bool:
    return bool(state and state.status == "up" and all(p.process() for p in state.procs))


def describe(stack: Stack) -> str:
    cfg, state = stack.config, stack.state
    assert state is not None
    passwords = cfg.home / "simple_auth_manager_passwords.json"
    unpaused = " (unpaused: the latest scheduled run starts at once if it never ran)"
    on = ", unpaused" if cfg.unpause else ""
    embedded = f" (embedded Postgres, data in {_rel(state.embedded_pgdata or '')})"
    wechat = f"{state.sandbox_url} (the sandbox)" if state.sandbox_url else "your Connection"
    lines = [
        f"  UI and API   {cfg.url}",
        f"  login        {ADMIN_USER} / {stack.password}   (also in {_rel(passwords)})",
        f"  DAG          {DAG_ID}{unpaused if cfg.unpause else ''}",
        f"               {REQUESTS_DAG_ID} (refusals and voids){on}",
        f"               {WAITING_DAG_ID} (waiting orders, once authorised){on}",
        f"  order DB     {state.orders_db}   (the tools: source {_rel(cfg.state_dir / 'env.sh')})",
        f"  metadata DB  {state.meta_db}{embedded if state.embedded_pgdata else ''}",
        f"  WeChat       {wechat}",
        f"  receiver     {state.receiver_url} (WeChat's events)",
        f"  executor     {_executor(stack)}",
        f"  PDF root     {_rel(state.pdf_root or cfg.pdf_dir)}",
        f"  logs         {_rel(cfg.logs)}/ (processes), {_rel(cfg.home / 'logs')}/ (tasks)",
        f"  stop it      {stop_command(cfg)}",
    ]
    return "\n".join(lines)


def stop_command(cfg: StackConfig) -> str:
    """`make down`, with the state directory of a stack that runs beside the default one."""
    if cfg.state_dir.resolve() == DEFAULT_STATE_DIR.resolve():
        return "make down"
    return f"NONTAX_STACK_DIR={_rel(cfg.state_dir)} make down"


def _executor(stack: Stack) -> str:
    state = stack.state
    if state is None or not state.broker:
        return "LocalExecutor (in the scheduler)"
    workers = ", ".join(p.name for p in stack.workers())
    broker = celery_workers.describe_url(state.broker)
    return f"CeleryExecutor: {workers} on {broker} (keys {state.broker_prefix}*)"


def cmd_up(cfg: StackConfig) -> int:
    existing = StackState.load(cfg.state_file)
    if _is_up(existing):
        stack = Stack(cfg)
        stack.state = existing
        stack.secrets = Secrets.load_or_create(cfg.secrets_file)
        print(f"the stack is already up (pids in {_rel(cfg.state_file)}):")
        print(describe(stack))
        return 0
    if existing is not None and existing.procs:
        print("a previous stack left processes behind: stopping them first")
        left = stop_stack(existing, grace_s=cfg.grace_s, say=print)
        if left:
            print("could not stop:\n  " + "\n  ".join(left), file=sys.stderr)
            return 1
        existing.procs, existing.status = [], "down"
        existing.save(cfg.state_file)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {text}", flush=True)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # stop what was started, as on Ctrl-C
    stack = Stack(cfg, say=say)
    try:
        stack.up()
    except StackError as exc:
        print(f"\nmake up failed: {exc}\n(everything it had started is stopped)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything started is stopped", file=sys.stderr)
        return 130
    if cfg.unpause:
        _unpause_frequent_dags(stack)
    print(f"\nAirflow is up after {stack.started_in_s:.1f}s:")
    print(describe(stack))
    return 0


def _unpause_frequent_dags(stack: Stack, timeout_s: float = 60.0) -> None:
    """`make up` is for a person at the UI: refusals and voids asked there (or by `make refuse`)
    are carried out by `nontax_requests`, and waiting orders whose payers authorise are issued
    by `nontax_waiting`, so they run too. The library's `Stack` (tests, bench) leaves them
    paused: their runs are their own."""
    deadline = time.monotonic() + timeout_s
    for dag_id in FREQUENT_DAG_IDS:
        while True:
            try:
                stack.api.set_paused(False, dag_id=dag_id)
                break
            except AirflowApiError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    print(f"{dag_id} left paused ({exc}): unpause it in the UI")
                    break
            time.sleep(1)


def cmd_down(cfg: StackConfig) -> int:
    state = StackState.load(cfg.state_file)
    if state is None or (not state.procs and not state.embedded_pgdata):
        print("nothing to stop (no stack recorded in " + _rel(cfg.state_file) + ")")
        return 0
    names = ", ".join(f"{p.name} ({p.pid})" for p in state.procs if p.process() is not None)
    print(f"stopping {names or 'nothing alive'}")
    left = stop_stack(state, grace_s=cfg.grace_s, say=lambda text: print(f"  {text}"))
    if left:
        print("still running after SIGKILL:\n  " + "\n  ".join(left), file=sys.stderr)
        state.status = "down with leftovers"
        state.save(cfg.state_file)
        return 1
    state.procs, state.status = [], "down"
    state.save(cfg.state_file)
    print("stopped; no process of the stack is left")
    return 0


def cmd_status(cfg: StackConfig) -> int:
    state = StackState.load(cfg.state_file)
    if state is None or not state.procs:
        print(f"no stack running (state: {_rel(cfg.state_file)})")
        return 1
    for proc in state.procs:
        alive = proc.process() is not None
        print(f"  {proc.name:<14} pid {proc.pid:<8} {'running' if alive else 'GONE'}")
    others = len(stack_processes(state.stack_id, state.procs)) - sum(
        1 for p in state.procs if p.process()
    )
    print(f"  (+ {others} child processes)")
    print(f"  url {state.url}")
    try:
        secrets_ = Secrets.load_or_create(cfg.secrets_file)
        api = AirflowApi(state.url, ADMIN_USER, secrets_.admin_password, timeout=5)
        health = api.health()
        print(
            "  health: "
            + ", ".join(f"{c} {(health.get(c) or {}).get('status')}" for c in HEALTH_COMPONENTS)
        )
    except Exception as exc:  # noqa: BLE001 - status reports, never raises
        print(f"  health: the API does not answer ({type(exc).__name__})")
        return 1
    return 0 if _is_up(state) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nontax_dev.stack",
        description="`make up` / `make down`: the whole local Airflow for this project, in the "
        "background.",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--port", type=int, help="API server port (NONTAX_STACK_PORT, 8080)")
    parser.add_argument("--host", help="API server interface (NONTAX_STACK_HOST, 127.0.0.1)")
    parser.add_argument("--state-dir", type=Path, help="state directory (NONTAX_STACK_DIR)")
    parser.add_argument("--keep-paused", action="store_true", help="do not unpause the DAG")
    args = parser.parse_args(argv)
    cfg = StackConfig.from_env()
    if args.port:
        cfg.port = args.port
    if args.host:
        cfg.host = args.host
    if args.state_dir:
        cfg.state_dir = args.state_dir
    if args.keep_paused:
        cfg.unpause = False
    cfg.state_dir = cfg.state_dir.resolve()
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command](cfg)
