"""A `carry_out_requests` try as Airflow runs it, on real Postgres and the sandbox: a try that
loses its hold on an order ends failed and says who holds the order now; a try whose
supervisor dies stops sending, records the call in flight and ends its hold."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

from airflow.sdk.exceptions import AirflowFailException

from factories import ask
from waiting import wait_until
from wechat_nontax.requests.operators import CarryOutRequestsOperator
from wechat_nontax.settings import REQUESTS_DAG_ID, REQUESTS_TASK_ID

ROOT = Path(__file__).resolve().parents[3]
OTHER_TRY = f"{REQUESTS_DAG_ID}|manual__other|{REQUESTS_TASK_ID}|-1|1"


def _context(run_id: str) -> dict:
    ti = SimpleNamespace(
        dag_id=REQUESTS_DAG_ID, run_id=run_id, task_id=REQUESTS_TASK_ID, map_index=-1,
        try_number=1, max_tries=1,
    )  # fmt: skip
    return {"ti": ti, "run_id": run_id}


def _attempts(env) -> int:
    return env.sql("SELECT coalesce(sum(attempts), 0) FROM nontax.bill_request")[0][0]


def test_a_try_that_loses_its_hold_ends_failed_and_names_who_holds_the_order_now(env):
    """Another try takes the order while the refusal is in flight: its answer is not recorded
    and the try ends failed, without retries, saying so (before: it ended green)."""
    order = env.orders(1)[0]
    assert ask(env, order.order_id, "refuse").accepted
    env.sandbox.add_fault(endpoint="rejectinsert", kind="latency", latency_ms=2000)
    operator = CarryOutRequestsOperator(task_id=REQUESTS_TASK_ID)
    outcome: list = []

    def work() -> None:
        try:
            outcome.append(operator.execute(_context("scheduled__lost")))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    wait_until(lambda: _attempts(env) == 1, timeout=60, what="the refusal's call", interval=0.05)
    # This try's hold is taken over while its call is in flight (as after a hold ran out).
    env.sql(
        "UPDATE nontax.bill_order SET held_by = %s, claimed_by = %s, "
        "claim_expires_at = now() + interval '10 minutes' WHERE order_id = %s",
        (OTHER_TRY, OTHER_TRY.rsplit("|", 3)[0], order.order_id),
    )
    worker.join(60)
    assert not worker.is_alive()
    [failed] = outcome
    assert isinstance(failed, AirflowFailException), outcome
    message = str(failed)
    assert "lost its hold on 1 orders" in message
    assert f"{order.order_id}: " in message and f"{OTHER_TRY} holds it now" in message
    # Nothing recorded for it by the try that lost it: the request is pending still.
    assert env.sql("SELECT status FROM nontax.bill_request") == [("pending",)]
    assert env.sql(
        "SELECT held_by FROM nontax.bill_order WHERE order_id = %s", (order.order_id,)
    ) == [(OTHER_TRY,)]


TASK = """
import json, os, sys
from pathlib import Path
from types import SimpleNamespace
from wechat_nontax.requests.operators import CarryOutRequestsOperator
ti = SimpleNamespace(dag_id="nontax_requests", run_id="scheduled__watch",
                     task_id="carry_out_requests", map_index=-1, try_number=1, max_tries=1)
operator = CarryOutRequestsOperator(task_id="carry_out_requests")
try:
    outcome = operator.execute({"ti": ti, "run_id": "scheduled__watch"})
except Exception as exc:
    outcome = repr(exc)
# whole, then renamed into place: the test waits for the file to exist
Path(sys.argv[1] + ".part").write_text(json.dumps(outcome))
os.replace(sys.argv[1] + ".part", sys.argv[1])
"""
SUPERVISOR = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(300)
"""


def test_a_try_whose_supervisor_dies_records_the_call_in_flight_sends_no_more_and_ends_its_hold(
    env, tmp_path: Path
):
    """As an issuing batch: an orphaned try would go on carrying out requests that the next try
    then owns (before: all three were sent by the orphan)."""
    orders = env.orders(3)
    for order in orders:
        assert ask(env, order.order_id, "refuse").accepted
    env.sandbox.add_fault(endpoint="rejectinsert", kind="latency", latency_ms=3000)
    marker = tmp_path / "outcome.json"
    environ = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, TASK, str(marker)],
        env=environ, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: _attempts(env) == 1, timeout=120, what="the first refusal's call", interval=0.05
        )
        supervisor.kill()
        supervisor.wait(10)
        wait_until(marker.exists, timeout=60, what="the orphaned try to end", interval=0.05)
        assert json.loads(marker.read_text()) == {"done": 1}
    finally:
        # The task process is still in the supervisor's process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor.pid, signal.SIGKILL)
    assert len(env.sandbox.rejections()) == 1
    assert sorted(r[0] for r in env.sql("SELECT status FROM nontax.bill_request")) == [
        "done", "pending", "pending",
    ]  # fmt: skip
    assert _attempts(env) == 1
    assert env.sql("SELECT count(*) FROM nontax.bill_order WHERE held_by IS NOT NULL") == [(0,)]
