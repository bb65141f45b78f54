"""The DAG `nontax_requests` as Airflow operators: carry out the pending requests, report.

Thin, like `issuing.operators`: each builds what it needs from Connections and hands the work to the
package (`requests.runner`, `requests.contract`). Nothing heavy is imported at module level.
- `carry_out_requests` works through the pending requests (a call each); it fails when it lost
  the hold on an order (someone else works on it, or nothing does: a person must see it) or
  could not make calls at all: no access token (both without retries, like an issuing batch),
  the order database away (retried by Airflow). Like an issuing batch, it stops sending when
  Airflow kills it or its supervisor is gone;
- `report` (the last task, so the run takes its state) lists what each request of this run came
  to, ends any hold a crashed try left, and is red while a request of the run ended refused or
  failed, or when `carry_out_requests` did not finish: a person reads the reason in the log,
  `make attention` or the order's history.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from wechat_nontax.requests.contract import NEEDS_PERSON
from wechat_nontax.settings import ORDERS_CONN_ID, REQUESTS_TASK_ID, WECHAT_CONN_ID
from wechat_nontax.supervisor import TryStop, watch_supervisor


class CarryOutRequestsOperator(BaseOperator):
    """Refuse orders (rejectinsert) and void bills (updatestatus CANCEL) as requested, each
    while this try holds the order; each outcome is written back as soon as it is known."""

    template_fields: Sequence[str] = ("max_requests",)
    ui_color = "#f6d6c9"

    def __init__(
        self,
        *,
        wechat_conn_id: str = WECHAT_CONN_ID,
        orders_conn_id: str = ORDERS_CONN_ID,
        max_requests: int | str | None = None,
        time_budget_s: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.wechat_conn_id = wechat_conn_id
        self.orders_conn_id = orders_conn_id
        self.max_requests = max_requests
        self.time_budget_s = time_budget_s  # None: the runner's own (transient retries)

    def execute(self, context: Any) -> dict[str, int]:
        from wechat_nontax.requests.runner import RequestOutcome, RequestRunner, result_table
        from wechat_nontax.requests.store import RequestStore
        from wechat_nontax.settings import default_hold_s
        from wechat_nontax.store.connection import connect
        from wechat_nontax.store.holders import lost_holds_message, task_holder
        from wechat_nontax.store.orders import OrderStore
        from wechat_nontax.wechat.hook import WeChatNonTaxHook

        ti, run_id = context["ti"], context["run_id"]
        self._try_stop = TryStop()
        watching = watch_supervisor(self._try_stop.supervisor_gone, parent=os.getppid())
        conn = connect(self.orders_conn_id, application_name="nontax-requests")
        store = RequestStore(conn)
        hook = WeChatNonTaxHook(self.wechat_conn_id, pool_size=1)
        try:
            # A call may take a token fetch, the call and a retry after a refreshed token, each
            # up to the timeout: the hold outlasts that, as a batch's does.
            hold_s = max(default_hold_s(), 2 * (3 * hook.call_timeout_s + 2.0))
            budget = {} if self.time_budget_s is None else {"time_budget_s": self.time_budget_s}
            runner = RequestRunner(
                hook, store, quotas=OrderStore(conn), run_id=run_id, hold_s=hold_s,
                holder=task_holder(ti), **budget,
            )  # fmt: skip
            self._try_stop.attach(runner)
            limit = int(self.max_requests) if self.max_requests not in (None, "", "None") else None
            results = runner.run(limit)
        finally:
            watching.set()
            hook.close()
            store.close()
        self.log.info("Requests of this try:\n%s", result_table(results))
        lost = [r for r in results if r.outcome is RequestOutcome.NOT_HELD]
        if lost:
            message = lost_holds_message(
                [(f"#{r.request_id} {r.order_id}", r.reason) for r in lost],
                not_done="did not carry out their requests",
            )
            self.log.error("%s", message)
            raise AirflowFailException(message)
        if runner.blocked:
            # As an issuing batch without a token: a person's cause (the Connection, the app
            # secret); the next scheduled run tries again anyway.
            raise AirflowFailException(f"{runner.blocked}; the requests stay pending")
        return dict(Counter(str(r.outcome) for r in results))

    def on_kill(self) -> None:
        stop = getattr(self, "_try_stop", None)
        if stop is not None:
            stop.killed()


class RequestsReportOperator(BaseOperator):
    """What each request this run worked on came to; red while any ended refused or failed."""

    ui_color = "#e8e8e8"

    def __init__(self, *, orders_conn_id: str = ORDERS_CONN_ID, **kwargs: Any):
        super().__init__(**kwargs)
        self.orders_conn_id = orders_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from wechat_nontax.requests.store import RequestStore, format_request
        from wechat_nontax.store.connection import connect
        from wechat_nontax.store.holders import run_key

        ti, run_id = context["ti"], context["run_id"]
        store = RequestStore(connect(self.orders_conn_id, application_name="nontax-requests"))
        try:
            # Claims and run-out holds a killed try of this run left behind: of this DAG's run
            # alone (another DAG's run may have the same run id).
            released = store.release(run_key(ti.dag_id, run_id))
            rows = store.of_run(run_id)
        finally:
            store.close()
        if released:
            self.log.info("ended %d claims left by a try that stopped", released)
        self.log.info(
            "Requests of this run: %d\n%s", len(rows), "\n".join(map(format_request, rows)) or "-"
        )
        report = {
            "requests": len(rows),
            "by_status": dict(Counter(f"{r.kind} {r.status}" for r in rows)),
            "needs_person": [
                {"request_id": r.request_id, "order_id": r.order_id, "kind": r.kind,
                 "status": r.status, "outcome": r.outcome}
                for r in rows if r.status in NEEDS_PERSON
            ],
        }  # fmt: skip
        carried_out = context["ti"].xcom_pull(task_ids=REQUESTS_TASK_ID)
        if carried_out is None:
            # No access token, the order database away, a crash: its requests stay pending.
            raise AirflowFailException(
                "carry_out_requests did not finish (see its log): the requests it did not reach "
                "stay pending for the next run; fix the cause or clear it"
            )
        if report["needs_person"]:
            context["ti"].xcom_push(key="return_value", value=report)
            first = report["needs_person"][0]
            raise AirflowFailException(
                f"{len(report['needs_person'])} requests of this run were not carried out "
                f"(#{first['request_id']} {first['kind']} {first['order_id']}: "
                f"{first['status']}: {first['outcome']}): see the report above"
            )
        return report
