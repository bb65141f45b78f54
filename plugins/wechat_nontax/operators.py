"""The upload and insert steps as Airflow operators, each over one batch of order ids.

Thin on purpose: they build the hook and the store from Connections, hand the batch to
`issuing.BatchIssuer`, log a table of outcomes, and turn the outcomes into the task's state:
- every order done or waiting for something outside our control: success;
- an order whose transient errors outlasted the time budget: fail WITH Airflow's retries
  (waiting may help; the retry only touches the unfinished orders);
- an order that needs a person (bad data, permanent refusal, broken configuration): fail WITHOUT
  retries (`AirflowFailException`), reasons in the log; the person fixes the cause and clears
  this instance in the UI.
Nothing heavy is imported at module level: the DAG file imports this module at every parse.
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
        return str(order_ids[0])
    return f"{order_ids[0]} … {order_ids[-1]} ({len(order_ids)})"


class _BatchOperator(BaseOperator):
    """Shared by both steps: one batch of orders, worked on concurrently."""

    template_fields: Sequence[str] = ("order_ids", "pdf_root", "dry_run", "max_workers")
    ui_color = "#d8f5d1"
    insert: bool = False  # whether the step goes on to insertbill

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
            results = issuer.run(order_ids, insert=self.insert)
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


class UploadBillPdfOperator(_BatchOperator):
    """Validate each order of the batch and upload its PDF (setpdf) unless a fresh media id
    exists; store the media id."""

    insert = False


class InsertBillOperator(_BatchOperator):
    """Insert each order's bill (nontax/insertbill) into the payer's card package, uploading
    the PDF first where the upload step did not (or its media id is no longer fresh)."""

    insert = True
    ui_color = "#c9e4f6"


def _as_bool(value: Any) -> bool:
    # A templated param arrives as a string ("True"/"false") when rendered from Jinja.
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)
