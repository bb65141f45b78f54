"""The benchmark reports a figure only for a run that issued the orders it was given
(bench/own_orders.py, through bench/run.py's `own_orders`), on the real order database."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import psycopg2
import pytest
from bench.own_orders import NotItsOwnRun, OwnOrders, count_orders

BENCH = Path(__file__).resolve().parents[3] / "bench"


class SandboxCalls:
    """The sandbox's admin client as far as the check reads it: insertbill calls answered."""

    def __init__(self, calls: Counter) -> None:
        self._calls = calls

    def calls(self) -> dict[str, int]:
        return dict(self._calls)

    def close(self) -> None:
        pass


class BenchStack:
    """What `own_orders` uses of a benchmark stack: its order database, PDFs and sandbox."""

    def __init__(self, orders_dsn: str, pdf_root: Path) -> None:
        self.orders_dsn, self.pdf_root = orders_dsn, pdf_root
        self.insert_calls: Counter = Counter()

    def sandbox_admin(self) -> SandboxCalls:
        return SandboxCalls(self.insert_calls)


@pytest.fixture
def bench_run(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))  # bench/run.py imports its siblings by bare name
    import run

    yield run
    for name in ("run", "own_orders", "cpu_account", "schedule", "ceiling"):
        sys.modules.pop(name, None)


def issue(dsn: str, label: str, stack: BenchStack | None = None) -> None:
    """What a run of the pipeline leaves: the label's due orders inserted (and the calls)."""
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE nontax.bill_order SET status = 'inserted', code = 'c' || order_id, "
            "openid = 'o', inserted_at = now() WHERE status = 'authorized' AND order_id LIKE %s",
            (label + "_" * 8,),
        )
        if stack is not None:
            stack.insert_calls["insertbill"] += cur.rowcount
    conn.close()


def test_a_run_whose_orders_an_earlier_run_inserted_is_refused(orders_db, tmp_path, bench_run):
    """An interrupted benchmark left its database: loading the same orders again leaves them
    inserted, the run has nothing to do, and its figure would be a fiction."""
    stack = BenchStack(orders_db, tmp_path)
    bench_run.load_orders(orders_db, tmp_path, "P10K1", 5)
    issue(orders_db, "P10K1")  # the interrupted run's work

    issued = bench_run.own_orders(stack, "pipeline P10K1", "P10K1", 5)
    # The run finds nothing due and calls nobody.
    refused = sys.modules["own_orders"].NotItsOwnRun  # bench/run.py's import of the module
    with pytest.raises(refused, match=r"pipeline P10K1: .*0 of its 5 orders were due"):
        issued()


def test_a_run_that_issued_its_own_orders_passes_and_counts_only_them(
    orders_db, tmp_path, bench_run
):
    stack = BenchStack(orders_db, tmp_path)
    bench_run.load_orders(orders_db, tmp_path, "P10K10", 3)
    issue(orders_db, "P10K10")  # another run's orders, under a label that starts alike
    issued = bench_run.own_orders(stack, "pipeline P10K1", "P10K1", 5)
    issue(orders_db, "P10K1", stack)
    assert issued() == 5
    assert count_orders(orders_db, "P10K1", "inserted") == 5


def test_a_run_without_its_calls_or_with_orders_left_is_refused():
    OwnOrders("pipeline W1K", 10, 10, 10, 10).check()
    with pytest.raises(NotItsOwnRun, match="the sandbox answered 0 insertbill calls for 10"):
        OwnOrders("pipeline W1K", 10, 10, 10, 0).check()
    with pytest.raises(NotItsOwnRun, match=r"per-order DAG: .*7 of its 10 orders were inserted"):
        OwnOrders("per-order DAG", 10, 10, 7, 10).check()
