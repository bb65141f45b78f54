"""A benchmark figure comes from the run it names: each measured run must issue its own orders.

A run is given N orders of its own (order ids under its label). Before it is triggered, all N
must be due in the order database; after it ended, all N must be inserted there, and the sandbox
must have answered at least N insertbill calls in between. A run that found its orders already
settled (a database an interrupted benchmark left behind) finishes in a blink at no CPU: its
orders/s would be a fiction, so `check` refuses it, naming the row.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2


class NotItsOwnRun(RuntimeError):
    """A measured run did not issue the orders it was given: its figures are not reported."""


@dataclass(frozen=True)
class OwnOrders:
    """What a measured run was given and what it did with it."""

    row: str  # the row and run, as the benchmark's output names it (e.g. "pipeline P10K1")
    given: int
    due_before: int  # of the given orders, due when the run was triggered
    inserted_after: int  # of the given orders, inserted when the run had ended
    insert_calls: int | None = None  # insertbill calls the sandbox answered meanwhile

    def problems(self) -> list[str]:
        found = []
        if self.due_before != self.given:
            found.append(
                f"{self.due_before} of its {self.given} orders were due when it started (the "
                f"others were settled already: databases an earlier run left behind?)"
            )
        if self.inserted_after != self.given:
            found.append(f"{self.inserted_after} of its {self.given} orders were inserted")
        if self.insert_calls is not None and self.insert_calls < self.given:
            found.append(
                f"the sandbox answered {self.insert_calls} insertbill calls for {self.given} orders"
            )
        return found

    def check(self) -> None:
        """Raises NotItsOwnRun when the run did not issue exactly the orders it was given."""
        found = self.problems()
        if found:
            raise NotItsOwnRun(
                f"{self.row}: no figure reported, the run did not issue its own orders: "
                + "; ".join(found)
            )


def count_orders(dsn: str, label: str, status: str) -> int:
    """A run's orders (`ceiling.demo_orders`: its label and 8 digits, so that "P10K1" is not
    also "P10K10") in `status` in the order database."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM nontax.bill_order WHERE status = %s AND order_id LIKE %s",
                (status, label + "_" * 8),
            )
            (count,) = cur.fetchone()
    finally:
        conn.close()
    return int(count)
