"""The DAG's steps as Airflow operators: claim, token, issue (one batch), announce, report.

Thin on purpose: each builds what it needs from Connections and hands the work to the package
(`run_steps`, `batch`). The issuing step turns its batch's outcomes into the task's state:
- every order done or waiting for something outside our control: success;
- an order whose transient errors outlasted the time budget: fail WITH Airflow's retries
  (waiting may help; the retry only touches the unfinished orders);
- an order that needs a person (bad data, permanent refusal, broken configuration): fail WITHOUT
  retries (`AirflowFailException`), reasons in the log; the person fixes the cause and clears
  this instance in the UI.
Nothing heavy is imported at module level: the DAG file imports this module at every parse, and
operator classes (rather than `@task`) keep Airflow's Python-operator machinery out of the parse.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from wechat_nontax.settings import (
    BILLS_ISSUED_ASSET,
    ISSUE_TASK_ID,
    ORDERS_CONN_ID,
    WECHAT_CONN_ID,
    WECHAT_POOL,
)

# How often a task process looks whether its supervisor is still there.
SUPERVISOR_CHECK_S = 1.0


def batch_label(order_ids: Sequence[str]) -> str:
    """How a mapped instance is named in the UI: its first and last order and its size."""
    if not order_ids:
        return "empty batch"
    if len(order_ids) == 1:
        # Never a bare order id: a numeric one would be rendered as a number, not a label.
        return f"{order_ids[0]} (1)"
    return f"{order_ids[0]} … {order_ids[-1]} ({len(order_ids)})"


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
        from wechat_nontax.issuing.batch import BatchIssuer, Settings
        from wechat_nontax.issuing.pdfs import default_pdf_root, read_pdf
        from wechat_nontax.issuing.validation import Limits
        from wechat_nontax.store.connection import connect
        from wechat_nontax.store.holds import task_holder
        from wechat_nontax.store.orders import OrderStore
        from wechat_nontax.wechat.hook import WeChatNonTaxHook

        ti = context["ti"]
        self._issuer = None
        self._supervisor_gone: str | None = None
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
            dry_run=_as_bool(self.dry_run),
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
        watching = watch_supervisor(self._on_supervisor_gone, parent=supervisor)
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
            if self._supervisor_gone is not None:  # gone before the issuer was there to stop
                self._issuer.stop(self._supervisor_gone)
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
        # Airflow stops the task (marked in the UI, a timeout, a worker shutting down): send
        # nothing more and let the calls in flight be recorded before the process ends.
        issuer = getattr(self, "_issuer", None)
        if issuer is not None:
            issuer.stop("not sent: the task was stopped")

    def _on_supervisor_gone(self, reason: str) -> None:
        # Airflow no longer sees this try (it fails it and runs the next one): send nothing
        # more, record the calls in flight and end the hold, so that the next try takes over.
        self._supervisor_gone = reason
        issuer = getattr(self, "_issuer", None)
        if issuer is not None:
            issuer.stop(reason)

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
            reasons = "; ".join(f"{r.order_id}: {r.reason}" for r in lost[:20])
            message = (
                f"batch {batch}: this try lost its hold on {len(lost)} orders and did not send "
                f"them (or could not record their result): {reasons}"
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


def watch_supervisor(
    on_gone: Callable[[str], None],
    *,
    parent: int | None = None,
    every_s: float = SUPERVISOR_CHECK_S,
) -> threading.Event:
    """Call `on_gone(reason)` once if this process's parent, the task's supervisor (a Celery
    pool process, the LocalExecutor's worker), exits before the returned event is set. Without
    it nothing reports this try to Airflow, which fails it and starts the next one: an orphan
    that went on would hold its orders from that try and send unseen. Its parent's death shows
    as a new parent id (the orphan is adopted by an init or a subreaper); `parent` is the one
    this process had when the task started (default: now)."""
    parent = os.getppid() if parent is None else parent
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every_s):
            if os.getppid() != parent:
                on_gone(f"not sent: the task's supervisor (pid {parent}) is gone")
                return

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
    return done


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


class ClaimOrdersOperator(BaseOperator):
    """Claim the run's due orders (row locks that skip locked rows, a lease) and split them into
    batches; returns the batches of order ids (XCom), which the issuing step maps over."""

    template_fields: Sequence[str] = ("batch_size", "min_batches", "max_orders", "order_ids")
    ui_color = "#f6ecc9"

    def __init__(
        self,
        *,
        batch_size: int | str,
        min_batches: int | str = 1,
        max_orders: int | str | None = None,
        order_ids: Sequence[str] | str = (),
        orders_conn_id: str = ORDERS_CONN_ID,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self.min_batches = min_batches
        self.max_orders = max_orders
        self.order_ids = order_ids
        self.orders_conn_id = orders_conn_id

    def execute(self, context: Any) -> list[list[str]]:
        from wechat_nontax.issuing.run_steps import claim_orders
        from wechat_nontax.store.holds import split_run_key

        _refuse_unknown_params(context)
        dry_run = _as_bool(context["params"].get("dry_run", False))
        if not dry_run:
            _replay_journal(self.orders_conn_id, self.log)
        dag_id = context["ti"].dag_id
        claim = claim_orders(
            _run_key(context),
            orders_conn_id=self.orders_conn_id,
            batch_size=int(self.batch_size),
            min_batches=int(self.min_batches),
            max_orders=int(self.max_orders) if self.max_orders else None,
            order_ids=[str(order_id) for order_id in self.order_ids] or None,
            dry_run=dry_run,
            # A claim of another run names that run's DAG (an older one: this DAG's run).
            run_state=lambda key: _run_state(*split_run_key(key, dag_id)),
        )
        batches = claim.batches
        if claim.reclaimed:
            self.log.info(
                "claim_orders ran again in this run: it takes back this run's %d unfinished "
                "orders (those that needed a person too), in the same batches, and no new ones "
                "(they go to the next run)",
                len(claim.order_ids),
            )
        self.log.info(
            "Claimed %d orders in %d batches: %s",
            len(claim.order_ids), len(batches), ", ".join(map(batch_label, batches)) or "-",
        )  # fmt: skip
        for missing in claim.not_taken:
            self.log.warning("not taken: %s: %s", missing["order_id"], missing["reason"])
        context["ti"].xcom_push(key="not_taken", value=claim.not_taken)
        return batches


def _run_key(context: Any) -> str:
    """The key this task's run claims under: its own DAG's (another DAG's run may have the same
    run id)."""
    from wechat_nontax.store.holds import run_key

    return run_key(context["ti"].dag_id, context["run_id"])


def _refuse_unknown_params(context: Any) -> None:
    """A misspelt key in a manual run's conf (`order_id`) would otherwise be ignored and the
    run issue every due order."""
    import difflib

    conf = getattr(context.get("dag_run"), "conf", None) or {}
    # The DAG's declared params: the run's `params` already has the conf's keys merged in.
    known = set(getattr(context.get("dag"), "params", None) or context["params"])
    unknown = sorted(set(conf) - known)
    if unknown:
        hints = [
            f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            for key in unknown
            for close in [difflib.get_close_matches(key, known, n=1)]
        ]
        raise AirflowFailException(
            f"unknown params in the run's conf: {', '.join(hints)}; "
            f"known: {', '.join(sorted(known))}"
        )


def _run_state(dag_id: str, run_id: str) -> str | None:
    """A run's state as Airflow knows it: "deleted" when this Airflow has no such run (a person
    deleted it; or another deployment's run, whose tries' holds still protect what they send),
    None when it cannot say now (its claims are then respected)."""
    try:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        state = RuntimeTaskInstance.get_dagrun_state(dag_id, run_id)
    except Exception as exc:  # noqa: BLE001
        text = str(exc).lower()
        return "deleted" if any(m in text for m in ("not found", "not_found", "404")) else None
    return str(getattr(state, "value", state))  # a DagRunState, or its plain value


def _replay_journal(orders_conn_id: str, log: Any, *, run: tuple[str, str] | None = None) -> int:
    """Record the bills kept in Airflow because the order database was away (see journal), of
    the run (dag_id, run_id), or of every run."""
    from wechat_nontax.issuing import journal
    from wechat_nontax.store.connection import connect
    from wechat_nontax.store.orders import OrderStore

    try:
        keys = journal.keys_of(journal.run_name(*run) if run is not None else None)
    except Exception as exc:  # noqa: BLE001 (Variables unreachable: the next step tries again)
        log.warning("could not read the journal of unrecorded bills: %s", exc)
        return 0
    if not keys:
        return 0
    store = OrderStore(connect(orders_conn_id, application_name="nontax-journal"))
    try:
        written = journal.replay(store, keys=keys)
    finally:
        store.close()
    log.info("recorded %d bills kept in the journal", written)
    return written


class RefreshTokenOperator(BaseOperator):
    """Make sure the shared access token is valid before the batches start (returns how, never
    the token). Skipped work in a dry run."""

    template_fields: Sequence[str] = ("dry_run",)
    ui_color = "#f6ecc9"

    def __init__(
        self, *, wechat_conn_id: str = WECHAT_CONN_ID, dry_run: bool | str = False, **kwargs
    ):
        super().__init__(**kwargs)
        self.wechat_conn_id = wechat_conn_id
        self.dry_run = dry_run

    def execute(self, context: Any) -> str:
        from wechat_nontax.issuing.run_steps import warm_token

        if _as_bool(self.dry_run):
            return "dry run: no token needed"
        return warm_token(wechat_conn_id=self.wechat_conn_id)


class _RunOrdersOperator(BaseOperator):
    """A step over all of the run's orders: `batches` is the claim step's output."""

    template_fields: Sequence[str] = ("batches",)
    ui_color = "#e8e8e8"

    def __init__(self, *, batches: Any, orders_conn_id: str = ORDERS_CONN_ID, **kwargs: Any):
        super().__init__(**kwargs)
        self.batches = batches
        self.orders_conn_id = orders_conn_id


class AnnounceBillsOperator(_RunOrdersOperator):
    """Count the run's inserted bills; skipped when there are none, so that the Asset in its
    `outlets` is updated only when bills were issued."""

    def execute(self, context: Any) -> int:
        from airflow.sdk.exceptions import AirflowSkipException

        from wechat_nontax.issuing.run_steps import count_inserted, run_order_ids

        if self.batches is None:
            raise AirflowSkipException("the claim did not finish: no batch ran")
        order_ids = run_order_ids(
            _run_key(context), self.batches, orders_conn_id=self.orders_conn_id
        )
        inserted = count_inserted(order_ids, orders_conn_id=self.orders_conn_id)
        if not inserted:
            raise AirflowSkipException("no bill issued in this run")
        return inserted


class RunReportOperator(_RunOrdersOperator):
    """The run's report: counts by status, who needs a person and why, what was asked for and
    not taken; records kept bills and releases the run's claims. Fails (after publishing the
    report) while any order needs a person or was left unfinished, so that a crashed batch or a
    run marked by hand cannot leave a green run. With `earlier_runs` (the daily run) the orders
    of earlier runs that still need a person are listed and keep it red too; a frequent run
    judges its own orders only (else it would be red, and alert, every few minutes for one)."""

    template_fields: Sequence[str] = ("batches", "dry_run")

    def __init__(self, *, dry_run: bool | str = False, earlier_runs: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.dry_run = dry_run
        self.earlier_runs = earlier_runs

    def execute(self, context: Any) -> dict:
        from wechat_nontax.issuing.run_steps import build_report, finish_report, run_order_ids

        ti, run_id = context["ti"], context["run_id"]
        dry_run = _as_bool(self.dry_run)
        order_ids = run_order_ids(
            _run_key(context), self.batches, orders_conn_id=self.orders_conn_id
        )
        outputs = ti.xcom_pull(task_ids=ISSUE_TASK_ID, key="return_value") if dry_run else None
        recovered = (
            0
            if dry_run
            else _replay_journal(self.orders_conn_id, self.log, run=(ti.dag_id, run_id))
        )
        summary = build_report(
            _run_key(context),
            order_ids,  # none when the claim failed; the run's claims are released all the same
            orders_conn_id=self.orders_conn_id,
            started_at=context["dag_run"].start_date,
            batches=len(self.batches or ()),
            dry_run=dry_run,
            not_taken=ti.xcom_pull(task_ids="claim_orders", key="not_taken") or (),
            findings=[f for out in _as_list(outputs) for f in (out or {}).get("findings", ())],
            recovered=recovered,
            earlier_runs=self.earlier_runs,
        )
        if self.batches is None:
            raise AirflowFailException(
                "claim_orders did not finish, so no batch ran: see its log, fix the cause and "
                "clear claim_orders with its downstream tasks"
            )
        return finish_report(summary, ti)


def issuing_dag_args(**params: Any) -> dict[str, Any]:
    """The DAG arguments the issuing DAGs share: the params `max_orders` and `workers`, then
    `params`; templates rendered as values; the mapped batches labelled by `batch_label`."""
    from airflow.sdk import Param

    return {
        "params": {
            "max_orders": Param(None, type=["null", "integer"], minimum=1, description="At most"),
            "workers": Param(
                16, type="integer", minimum=1, maximum=64, description="Calls per batch"
            ),
            **params,
        },
        "render_template_as_native_obj": True,
        "user_defined_filters": {"batch_label": batch_label},
        "tags": ["wechat", "fiscal-bills"],
    }


def issue_claimed_batches(
    claim: ClaimOrdersOperator,
    *,
    max_workers: int | str,
    dry_run: bool | str = False,
    earlier_runs: bool = True,
    wechat_conn_id: str = WECHAT_CONN_ID,
    orders_conn_id: str = ORDERS_CONN_ID,
) -> BaseOperator:
    """The issuing DAGs' steps after their claim, in the DAG being defined: `issue_bills` (one
    instance per batch), `announce_bills`, `report`. Returns `issue_bills`, for what else it
    waits for."""
    from datetime import timedelta

    # One task instance per batch, labelled in the UI by its first and last order.
    issue = IssueBillsOperator.partial(
        task_id=ISSUE_TASK_ID,
        wechat_conn_id=wechat_conn_id,
        orders_conn_id=orders_conn_id,
        max_workers=max_workers,
        dry_run=dry_run,
        pool=WECHAT_POOL,
        map_index_template="{{ task.order_ids | batch_label }}",
        # A batch at its bounds (2,500 orders, one worker, slow answers) takes about an hour;
        # past this Airflow stops it and it is retried on its unfinished orders.
        execution_timeout=timedelta(hours=3),
    ).expand(order_ids=claim.output)
    # After every batch, failed ones too: bills issued beside orders that failed still count.
    announce = AnnounceBillsOperator(
        task_id="announce_bills",
        batches=claim.output,
        orders_conn_id=orders_conn_id,
        outlets=[Asset(**BILLS_ISSUED_ASSET)],
        trigger_rule="all_done",
        execution_timeout=timedelta(minutes=5),
    )
    # The last task, so the run takes its state: red while any order of the run needs a person
    # or was left unfinished, or the claim failed.
    report = RunReportOperator(
        task_id="report",
        batches=claim.output,
        orders_conn_id=orders_conn_id,
        dry_run=dry_run,
        earlier_runs=earlier_runs,
        trigger_rule="all_done",
        execution_timeout=timedelta(minutes=10),
    )
    claim >> issue >> announce >> report
    issue >> report  # the report waits for every batch itself, whatever is cleared
    return issue


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    return list(value)


def _as_bool(value: Any) -> bool:
    # A templated param arrives as a string ("True"/"false") when rendered from Jinja.
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)
