"""The DAG's steps as Airflow operators: claim, token, issue (one batch), announce, report.

Thin on purpose: each builds what it needs from Connections and hands the work to the package
(`run_steps`, `issuing`). The issuing step turns its batch's outcomes into the task's state:
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
from collections import Counter
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

DEFAULT_WECHAT_CONN_ID = "wechat_nontax_default"
DEFAULT_ORDERS_CONN_ID = "nontax_orders_db"


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
        wechat_conn_id: str = DEFAULT_WECHAT_CONN_ID,
        orders_conn_id: str = DEFAULT_ORDERS_CONN_ID,
        pdf_root: str | None = None,
        max_workers: int = 16,
        time_budget_s: float | None = None,
        lease_s: int | None = None,
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
        self.max_pdf_bytes = max_pdf_bytes
        self.dry_run = dry_run

    def execute(self, context: Any) -> dict[str, int]:
        from wechat_nontax.hook import WeChatNonTaxHook
        from wechat_nontax.issuing import BatchIssuer, Settings
        from wechat_nontax.orders_db import connect
        from wechat_nontax.pdfs import default_pdf_root, read_pdf
        from wechat_nontax.store import OrderStore
        from wechat_nontax.validation import Limits

        order_ids = [str(order_id) for order_id in self.order_ids]
        limits = (
            Limits() if self.max_pdf_bytes is None else Limits(max_pdf_bytes=self.max_pdf_bytes)
        )
        # None (the default) keeps Settings' own default: one place for each of them.
        budgets = {"time_budget_s": self.time_budget_s, "lease_s": self.lease_s}
        settings = Settings(
            pdf_root=self.pdf_root or default_pdf_root(),
            limits=limits,
            max_workers=int(self.max_workers),
            dry_run=_as_bool(self.dry_run),
            **{name: value for name, value in budgets.items() if value is not None},
        )
        store = OrderStore(connect(self.orders_conn_id, application_name=f"nontax-{self.task_id}"))
        hook = WeChatNonTaxHook(self.wechat_conn_id, pool_size=settings.max_workers)
        try:
            # The account's card ids, when the Connection lists them: checked before any call.
            settings = dataclasses.replace(settings, card_ids=hook.allowed_card_ids)
            issuer = BatchIssuer(
                hook,
                store,
                settings,
                run_id=context["run_id"],
                read_pdf=lambda root, rel, limit: read_pdf(root, rel, max_bytes=limit),
            )
            results = issuer.run(order_ids)
        finally:
            hook.close()
            store.close()
        return self._judge(results)

    def _judge(self, results: list) -> dict[str, int]:
        from wechat_nontax.issuing import NEEDS_PERSON, PASSES_BY_WAITING, Outcome, outcome_table

        self.log.info("Outcomes of %d orders:\n%s", len(results), outcome_table(results))
        counts = Counter(str(r.outcome) for r in results)
        needs_person = [r for r in results if r.outcome in NEEDS_PERSON]
        waiting = [r for r in results if r.outcome in PASSES_BY_WAITING]
        quota = [r for r in results if r.outcome is Outcome.QUOTA]
        if waiting:
            raise AirflowException(
                f"{len(waiting)} orders hit errors that may pass (retried by Airflow, only the "
                f"unfinished orders); {len(needs_person)} need a person"
            )
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
        return dict(counts)


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
        orders_conn_id: str = DEFAULT_ORDERS_CONN_ID,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self.min_batches = min_batches
        self.max_orders = max_orders
        self.order_ids = order_ids
        self.orders_conn_id = orders_conn_id

    def execute(self, context: Any) -> list[list[str]]:
        from wechat_nontax.run_steps import claim_orders

        batches = claim_orders(
            context["run_id"],
            orders_conn_id=self.orders_conn_id,
            batch_size=int(self.batch_size),
            min_batches=int(self.min_batches),
            max_orders=int(self.max_orders) if self.max_orders else None,
            order_ids=[str(order_id) for order_id in self.order_ids or ()],
        )
        self.log.info(
            "Claimed %d orders in %d batches: %s",
            sum(map(len, batches)), len(batches), ", ".join(map(batch_label, batches)) or "-",
        )  # fmt: skip
        return batches


class RefreshTokenOperator(BaseOperator):
    """Make sure the shared access token is valid before the batches start (returns how, never
    the token). Skipped work in a dry run."""

    template_fields: Sequence[str] = ("dry_run",)
    ui_color = "#f6ecc9"

    def __init__(
        self, *, wechat_conn_id: str = DEFAULT_WECHAT_CONN_ID, dry_run: bool | str = False, **kwargs
    ):
        super().__init__(**kwargs)
        self.wechat_conn_id = wechat_conn_id
        self.dry_run = dry_run

    def execute(self, context: Any) -> str:
        from wechat_nontax.run_steps import warm_token

        if _as_bool(self.dry_run):
            return "dry run: no token needed"
        return warm_token(wechat_conn_id=self.wechat_conn_id)


class _RunOrdersOperator(BaseOperator):
    """A step over all of the run's orders: `batches` is the claim step's output."""

    template_fields: Sequence[str] = ("batches",)
    ui_color = "#e8e8e8"

    def __init__(
        self, *, batches: Any, orders_conn_id: str = DEFAULT_ORDERS_CONN_ID, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.batches = batches
        self.orders_conn_id = orders_conn_id


class AnnounceBillsOperator(_RunOrdersOperator):
    """Count the run's inserted bills; skipped when there are none, so that the Asset in its
    `outlets` is updated only when bills were issued."""

    def execute(self, context: Any) -> int:
        from airflow.sdk.exceptions import AirflowSkipException

        from wechat_nontax.run_steps import count_inserted

        if self.batches is None:
            raise AirflowSkipException("the claim did not finish: no batch ran")
        inserted = count_inserted(self.batches, orders_conn_id=self.orders_conn_id)
        if not inserted:
            raise AirflowSkipException("no bill issued in this run")
        return inserted


class RunReportOperator(_RunOrdersOperator):
    """The run's report: counts by status, who needs a person and why; releases the run's
    claims. Fails (after publishing the report) while orders need a person or were left
    unfinished, so that a crashed batch cannot leave a green run."""

    template_fields: Sequence[str] = ("batches", "dry_run")

    def __init__(self, *, dry_run: bool | str = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.dry_run = dry_run

    def execute(self, context: Any) -> dict:
        from wechat_nontax.run_steps import build_report, finish_report

        summary = build_report(
            context["run_id"],
            self.batches or [],  # None: the claim failed; its claims are released all the same
            orders_conn_id=self.orders_conn_id,
            started_at=context["dag_run"].start_date,
            dry_run=_as_bool(self.dry_run),
        )
        if self.batches is None:
            raise AirflowFailException(
                "claim_orders did not finish, so no batch ran: see its log, fix the cause and "
                "clear claim_orders with its downstream tasks"
            )
        return finish_report(summary, context["ti"])


def _as_bool(value: Any) -> bool:
    # A templated param arrives as a string ("True"/"false") when rendered from Jinja.
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)
