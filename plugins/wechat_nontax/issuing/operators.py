"""The issuing DAGs' run steps as Airflow operators: claim, token, announce, report.

Thin on purpose: each builds what it needs from Connections and hands the work to the package
(`run_steps`); the batch's own step is `issue_operator`. Nothing heavy is imported at module
level: the DAG file imports this module at every parse, and operator classes (rather than
`@task`) keep Airflow's Python-operator machinery out of the parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from wechat_nontax.issuing.task_args import as_bool, as_list, batch_label
from wechat_nontax.settings import CLAIM_TASK_ID, ISSUE_TASK_ID, ORDERS_CONN_ID, WECHAT_CONN_ID


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
        from wechat_nontax.store.holders import split_run_key

        _refuse_unknown_params(context)
        dry_run = as_bool(context["params"].get("dry_run", False))
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
    from wechat_nontax.store.holders import run_key

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

        if as_bool(self.dry_run):
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
        dry_run = as_bool(self.dry_run)
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
            not_taken=ti.xcom_pull(task_ids=CLAIM_TASK_ID, key="not_taken") or (),
            findings=[f for out in as_list(outputs) for f in (out or {}).get("findings", ())],
            recovered=recovered,
            earlier_runs=self.earlier_runs,
        )
        if self.batches is None:
            raise AirflowFailException(
                "claim_orders did not finish, so no batch ran: see its log, fix the cause and "
                "clear claim_orders with its downstream tasks"
            )
        return finish_report(summary, ti)
