"""The issuing step as an Airflow operator: one batch, one task try (`batch.BatchIssuer` does the
work). It turns its batch's outcomes into the task's state:
- every order done or waiting for something outside our control: success;
- an order whose transient errors outlasted the time budget: fail WITH Airflow's retries
  (waiting may help; the retry only touches the unfinished orders);
- an order that needs a person (bad data, permanent refusal, broken configuration), or a hold
  this try lost: fail WITHOUT retries (`AirflowFailException`), reasons in the log; the person
  fixes the cause and clears this instance in the UI.
Nothing heavy is imported at module level: the DAG files import this module at every parse.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from wechat_nontax.issuing.task_args import as_bool, batch_label
from wechat_nontax.settings import ORDERS_CONN_ID, WECHAT_CONN_ID
from wechat_nontax.supervisor import TryStop, watch_supervisor


class IssueBillsOperator(BaseOperator):
    """Issue one batch of bills: for each order, validate it, upload its PDF (setpdf) unless a
    fresh media id is stored, and insert the bill (nontax/insertbill) into the payer's card
    package; each order's result is written back as soon as it is known.

    The batch's orders run concurrently (`max_workers` calls in flight), each order's upload
    followed at once by its insert, so no order waits for the rest of its batch."""

    template_fields: Sequence[str] = ("order_ids", "pdf_root", "dry_run", "max_workers")
    ui_color = "#c9e4f6"

    def __init__(
        self,
        *,
        order_ids: list[str],
        wechat_conn_id: str = WECHAT_CONN_ID,
        orders_conn_id: str = ORDERS_CONN_ID,
        pdf_root: str | None = None,
        max_workers: int = 16,
        time_budget_s: float | None = None,
        lease_s: int | None = None,
        hold_s: float | None = None,
        max_pdf_bytes: int | None = None,
        dry_run: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.order_ids = order_ids
        self.wechat_conn_id = wechat_conn_id
        self.orders_conn_id = orders_conn_id
        self.pdf_root = pdf_root
        self.max_workers = max_workers
        self.time_budget_s = time_budget_s
        self.lease_s = lease_s
        self.hold_s = hold_s
        self.max_pdf_bytes = max_pdf_bytes
        self.dry_run = dry_run

    def execute(self, context: Any) -> dict[str, Any]:
        from wechat_nontax.issuing import journal
        from wechat_nontax.issuing.batch import BatchIssuer
        from wechat_nontax.issuing.batch_settings import Settings
        from wechat_nontax.issuing.pdfs import default_pdf_root, read_pdf
        from wechat_nontax.store.connection import connect
        from wechat_nontax.store.holders import task_holder
        from wechat_nontax.store.orders import OrderStore
        from wechat_nontax.wechat.hook import WeChatNonTaxHook
        from wechat_nontax.wechat.validation import Limits

        ti = context["ti"]
        self._issuer = None
        self._try_stop = TryStop()
        supervisor = os.getppid()
        order_ids = [str(order_id) for order_id in self.order_ids]
        limits = (
            Limits() if self.max_pdf_bytes is None else Limits(max_pdf_bytes=self.max_pdf_bytes)
        )
        # None (the default) keeps Settings' own default: one place for each of them.
        budgets = {
            "time_budget_s": self.time_budget_s, "lease_s": self.lease_s, "hold_s": self.hold_s,
        }  # fmt: skip
        settings = Settings(
            pdf_root=self.pdf_root or default_pdf_root(),
            limits=limits,
            max_workers=int(self.max_workers),
            dry_run=as_bool(self.dry_run),
            include_needs_person=_first_try_since_a_clear(ti, self.retries),
            **{name: value for name, value in budgets.items() if value is not None},
        )
        application = f"nontax-{self.task_id}"
        store = OrderStore(
            connect(self.orders_conn_id, application_name=application),
            reconnect=lambda: connect(self.orders_conn_id, application_name=application),
        )
        hook = WeChatNonTaxHook(self.wechat_conn_id, pool_size=settings.max_workers)
        run_id = context["run_id"]
        kept_as = journal.run_name(ti.dag_id, run_id)
        watching = watch_supervisor(self._try_stop.supervisor_gone, parent=supervisor)
        try:
            if not settings.dry_run:
                # Bills an earlier try of this batch issued but could not record: first. (If
                # Airflow cannot list them now, such an order gets 72056 and ends `duplicate`
                # until the report or the next claim writes its code over it.)
                try:
                    keys = journal.keys_of(kept_as, ti.map_index)
                except Exception as exc:  # noqa: BLE001
                    self.log.warning("could not read the journal of unrecorded bills: %s", exc)
                    keys = []
                journal.replay(store, keys=keys)
            # The account's card ids, when the Connection lists them: checked before any call.
            settings = dataclasses.replace(
                settings, card_ids=hook.allowed_card_ids, call_timeout_s=hook.call_timeout_s
            )
            self._issuer = BatchIssuer(
                hook,
                store,
                settings,
                run_id=run_id,
                holder=task_holder(ti),
                read_pdf=lambda root, rel, limit: read_pdf(root, rel, max_bytes=limit),
            )
            self._try_stop.attach(self._issuer)
            results = self._issuer.run(order_ids)
        finally:
            watching.set()
            hook.close()
            store.close()
            # Also when the try ends in an exception (a timeout, the database away): the bills
            # it could not record are kept for the next try, the report and the next claim.
            if self._issuer is not None and self._issuer.unrecorded:
                bills = [
                    {"order_id": r.order_id, "code": r.bill[0], "openid": r.bill[1],
                     "version": self._issuer.version_of(r.order_id), "run_id": run_id}
                    for r in self._issuer.unrecorded
                ]  # fmt: skip
                try:
                    journal.keep(journal.key_for(kept_as, ti.map_index, ti.try_number), bills)
                except Exception:
                    # Each bill is in the log already (UNRECORDED BILL): a person's last resort.
                    self.log.exception("could not keep %d unrecorded bills in Airflow", len(bills))
        return self._judge(
            results,
            dry_run=settings.dry_run,
            batch=batch_label(order_ids),
            retry_left=_retry_left(ti, self.retries),
        )

    def on_kill(self) -> None:
        stop = getattr(self, "_try_stop", None)
        if stop is not None:
            stop.killed()

    def _judge(
        self, results: list, *, dry_run: bool, batch: str = "", retry_left: bool = True
    ) -> dict[str, Any]:
        """The task's state from its orders: a hold this try lost first (someone else works on
        its orders, or nothing does: a person must see it), then a person's problem (no retry
        can fix it), then a spent quota (retrying today cannot help), then what passes by
        waiting."""
        from wechat_nontax.issuing.outcomes import (
            NEEDS_PERSON,
            PASSES_BY_WAITING,
            Outcome,
            outcome_table,
        )
        from wechat_nontax.store.holders import lost_holds_message

        self.log.info("Outcomes of %d orders:\n%s", len(results), outcome_table(results))
        counts = Counter(str(r.outcome) for r in results)
        needs_person = [r for r in results if r.outcome in NEEDS_PERSON]
        waiting = [r for r in results if r.outcome in PASSES_BY_WAITING]
        quota = [r for r in results if r.outcome is Outcome.QUOTA]
        summary: dict[str, Any] = dict(counts)
        if dry_run:
            # Findings go to the report (XCom), never to the order database.
            summary["findings"] = [
                {"order_id": r.order_id, "reason": r.reason}
                for r in results if r.outcome is Outcome.INVALID
            ]  # fmt: skip
            return summary
        lost = [r for r in results if r.outcome is Outcome.HOLD_LOST]
        if lost:
            message = f"batch {batch}: " + lost_holds_message(
                [(r.order_id, r.reason) for r in lost], not_done="did not send them"
            )
            self.log.error("%s", message)
            raise AirflowFailException(message)
        if needs_person:
            reasons = "; ".join(f"{r.order_id}: {r.reason}" for r in needs_person[:20])
            raise AirflowFailException(
                f"{len(needs_person)} orders need a person (fix the cause, then clear this "
                f"task): {reasons}"
            )
        if quota:
            raise AirflowFailException(
                f"{len(quota)} orders not sent: {quota[0].reason}. They stay due for the next run."
            )
        if waiting and not retry_left:
            # The last try: say what happens next, not a retry that will not come.
            raise AirflowException(
                f"{len(waiting)} orders are not done yet and this was the last try: they stay "
                f"due for the next run (or clear this task to try them now): "
                f"{waiting[0].order_id}: {waiting[0].reason}"
            )
        if waiting:
            raise AirflowException(
                f"{len(waiting)} orders are not done yet and may be by waiting (retried by "
                f"Airflow, only the unfinished orders): {waiting[0].order_id}: {waiting[0].reason}"
            )
        return summary


def _retry_left(ti: Any, retries: int | None) -> bool:
    """Whether Airflow retries this try if it fails (as its server decides: a task with
    retries, whose try number has not passed max_tries)."""
    max_tries = getattr(ti, "max_tries", None)
    return bool(retries) and (max_tries is None or getattr(ti, "try_number", 1) <= max_tries)


def _first_try_since_a_clear(ti: Any, retries: int | None) -> bool:
    """Whether this is the task's first try, or the first after a person cleared it, rather
    than one of Airflow's automatic retries. Airflow counts the same way: a clear sets
    max_tries to the try number plus the task's retries."""
    try_number, max_tries = getattr(ti, "try_number", 1), getattr(ti, "max_tries", None)
    if max_tries is None:
        return try_number <= 1
    return try_number == max_tries - (retries or 0) + 1
