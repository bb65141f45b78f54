"""Claims and holds: the one hold protocol of both pipelines.

A run CLAIMS its due orders (`claimed_by`, a lease, recorded in `nontax.run_claim`); one task try
then HOLDS each order while it works on it (`held_by`, the same lease renewed on a timer). Every
write-back names the holder and the row version it read (`holders.Hold`). The requests pipeline
holds its orders with the same statements (`hold_sql`, `hold_params`, `UNHOLD`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from wechat_nontax.store.holders import (
    HoldResult,
    NotHeld,
    RunClaim,
    claim_key,
    why_not_taken,
)
from wechat_nontax.store.sql import (
    DUE_SQL,
    REFUSAL_BLOCKS,
    SETTLED_SQL,
    TIME_HAS_COME,
    WORKABLE_SQL,
)

# A write-back that ends the order's journey for now also ends its claim and hold (the
# requests' write-backs too: `requests.store`).
UNHOLD = "held_by = NULL, claimed_by = NULL, claim_expires_at = NULL"

_LIVE_OWN_HOLD = "claimed_by = %(run_id)s AND held_by IS NOT NULL AND claim_expires_at > now()"

# Taking a hold, for both pipelines (a batch's orders, a request's order): the order has no
# live lease, or this try holds it already, or it is its own run's claim that no try holds.
_HOLDABLE = (
    "(claim_expires_at IS NULL OR claim_expires_at < now() OR held_by = %(holder)s "
    "OR (claimed_by = %(run)s AND held_by IS NULL))"
)


def held_guard(
    holder: str, version: str, *, status: str | None = f"status NOT IN {SETTLED_SQL}"
) -> str:
    """A guarded write's condition: the try named by the parameter `holder` holds the order, at
    the row version `version`, and its status is one the write may change (by default: it is not
    finished; a void acts on inserted orders, so the requests say their own; None: any)."""
    held = f"held_by = %({holder})s AND row_version = %({version})s"
    return f"{held} AND {status}" if status else held


# The rows due now. The waiting rows are found through bill_order_due_idx (status first): a run
# that finds none due reads no row of the others (the frequent run of `nontax_waiting` at idle).
_DUE_ROWS = f"status IN {DUE_SQL} AND {TIME_HAS_COME}"

# The rows a claim takes, in claim order: due now, no live lease of anyone.
_CLAIMABLE = """
    FROM nontax.bill_order
    WHERE {due}
      AND (claim_expires_at IS NULL OR claim_expires_at < now())
      AND NOT {refusal_blocks}
      AND (NOT %(targeted)s OR order_id = ANY(%(order_ids)s))
    ORDER BY authorized_at, order_id
    LIMIT %(limit)s
"""
_CLAIMABLE_DUE = _CLAIMABLE.format(
    due=_DUE_ROWS, refusal_blocks=REFUSAL_BLOCKS.format(table="bill_order")
)


# Where an order's journey and lease stand, for why a claim or a hold did not take it.
_WHY_SQL = (
    "SELECT order_id, status, extract(epoch FROM not_before - now()), claimed_by, held_by, "
    "extract(epoch FROM claim_expires_at - now()), "
    f"{REFUSAL_BLOCKS.format(table='bill_order')} FROM nontax.bill_order "
    "WHERE order_id = ANY(%s)"
)

# Claiming: the due rows in claim order, locked without waiting (rows another claim holds are
# skipped), stamped with the run and its lease in the same statement. Only rows nobody holds
# are taken: no live lease of another run, no live hold of a task try. The partial index
# bill_order_due_idx serves the scan; the rows are joined back by their physical address (ctid:
# the rows are locked, so it cannot move) instead of a second index lookup per row.
_CLAIM_SQL = """
    WITH due AS (
        SELECT ctid {claimable}
        FOR UPDATE SKIP LOCKED
    )
    UPDATE nontax.bill_order o
       SET claimed_by = %(run_id)s, held_by = NULL,
           claim_expires_at = now() + make_interval(secs => %(lease_s)s)
      FROM due WHERE o.ctid = due.ctid
    RETURNING o.order_id, o.authorized_at
"""

# The issuing runs' claim, public so that the benchmark can EXPLAIN it.
CLAIM_SQL = _CLAIM_SQL.format(claimable=_CLAIMABLE_DUE)

# What a dry run would claim: the same rows, read only.
_PEEK_SQL = f"SELECT order_id {_CLAIMABLE_DUE}"


def _why_not(
    rows: Sequence[tuple], order_ids: Sequence[str], *, refusals: bool = True
) -> dict[str, NotHeld]:
    """`why_not_taken` of each of `order_ids`, from the rows `_WHY_SQL` read (none: unknown);
    without `refusals`, a pending refusal is not a reason (the requests' own tries)."""
    found = {row[0]: row[1:] for row in rows}
    reasons = {}
    for order_id in order_ids:
        status, due_in, claimed_by, held_by, left, refusing = found.get(order_id, (None,) * 6)
        reasons[order_id] = why_not_taken(
            status, due_in_s=due_in and float(due_in), claimed_by=claimed_by,
            held_by=held_by, lease_left_s=left and float(left),
            refusal_pending=refusals and bool(refusing),
        )  # fmt: skip
    return reasons


def hold_sql(condition: str) -> str:
    """The one statement that takes a hold, for both pipelines: the orders `%(order_ids)s` that
    `condition` allows and no one else holds (`_HOLDABLE`), for the try `%(holder)s`, under
    its run's key `%(run)s`, for `%(hold_s)s` seconds; returns (order_id, row_version) of each
    one taken (the version every write-back of the try then names)."""
    return f"""
        UPDATE nontax.bill_order
           SET claimed_by = %(run)s, held_by = %(holder)s,
               claim_expires_at = now() + make_interval(secs => %(hold_s)s)
         WHERE order_id = ANY(%(order_ids)s) AND {_HOLDABLE} AND {condition}
        RETURNING order_id, row_version
    """


def hold_params(holder: str, order_ids: Sequence[str], hold_s: float) -> dict[str, Any]:
    return {
        "run": claim_key(holder), "holder": holder, "order_ids": list(order_ids),
        "hold_s": hold_s,
    }  # fmt: skip


class ClaimsAndHolds:
    """The order store's claims (a run's) and holds (a task try's): take, renew, release."""

    def claim_run(
        self,
        run: str,
        *,
        lease_s: int,
        split: Callable[[list[str]], list[list[str]]],
        limit: int | None = None,
        order_ids: Sequence[str] | None = None,
    ) -> RunClaim:
        """Claim the run's due orders, split them into batches and record
        the run's claim, in one transaction; `run` is its run key (`run_key`). A second claim in
        the same run (its claim step cleared and run again) takes back that run's own orders
        that are not finished, in the same batches, and no new ones: new orders belong to the
        next run, and the report keeps the whole run."""
        with self._connected(), self._lock, self._conn, self._conn.cursor() as cur:
            # Once a run, the kept counts by status are folded to a row per status.
            cur.execute("SELECT nontax.compact_status_counts()")
            cur.execute(
                "SELECT batches, not_taken FROM nontax.run_claim WHERE run_id = %s FOR UPDATE",
                (run,),
            )
            earlier = cur.fetchone()
            if earlier is not None:
                return self._reclaim(cur, run, earlier[0], earlier[1], lease_s=lease_s)
            cur.execute(
                CLAIM_SQL,
                {
                    "run_id": run,
                    "lease_s": lease_s,
                    "limit": limit,
                    "targeted": order_ids is not None,
                    "order_ids": list(order_ids or []),
                },
            )
            rows = cur.fetchall()
            claimed = [order_id for order_id, _ in sorted(rows, key=lambda r: (r[1], r[0]))]
            not_taken = self._not_taken(cur, order_ids, claimed) if order_ids is not None else []
            batches = split(claimed)
            cur.execute(
                "INSERT INTO nontax.run_claim (run_id, batches, not_taken) VALUES (%s, %s, %s)",
                (run, psycopg2.extras.Json(batches), psycopg2.extras.Json(not_taken)),
            )
        return RunClaim(batches, not_taken)

    def claim_due(
        self,
        run: str,
        *,
        lease_s: int,
        limit: int | None = None,
        order_ids: Sequence[str] | None = None,
    ) -> list[str]:
        """`claim_run` in one batch: the claimed order ids in claim order."""
        split = lambda claimed: [claimed] if claimed else []  # noqa: E731
        claim = self.claim_run(run, lease_s=lease_s, split=split, limit=limit, order_ids=order_ids)
        return claim.order_ids

    def _reclaim(self, cur, run, batches, not_taken, *, lease_s: int) -> RunClaim:
        everyone = [order_id for batch in batches for order_id in batch]
        # The run's own orders whatever their lease (a try of this run may still hold some: it
        # keeps its hold, and the batch's next try waits for it), never another run's.
        cur.execute(
            f"""
            UPDATE nontax.bill_order
               SET claimed_by = %(run_id)s,
                   held_by = CASE WHEN {_LIVE_OWN_HOLD} THEN held_by END,
                   claim_expires_at = CASE WHEN {_LIVE_OWN_HOLD} THEN claim_expires_at
                                      ELSE now() + make_interval(secs => %(lease_s)s) END
             WHERE order_id = ANY(%(ids)s) AND status IN {WORKABLE_SQL}
               AND NOT {REFUSAL_BLOCKS.format(table="bill_order")}
               AND (claim_expires_at IS NULL OR claim_expires_at < now()
                    OR claimed_by = %(run_id)s)
            RETURNING order_id
            """,
            {"run_id": run, "ids": everyone, "lease_s": lease_s},
        )
        taken = {row[0] for row in cur.fetchall()}
        cur.execute("UPDATE nontax.run_claim SET reclaimed_at = now() WHERE run_id = %s", (run,))
        # The same batches, each with its unfinished orders: a cleared mapped instance keeps
        # its index and its orders.
        return RunClaim([[o for o in b if o in taken] for b in batches], not_taken, True)

    def _not_taken(self, cur, requested: Sequence[str], claimed: list[str]) -> list[dict]:
        taken = set(claimed)
        rest = list(dict.fromkeys(o for o in requested if o not in taken))
        if not rest:
            return []
        cur.execute(_WHY_SQL, (rest,))
        why = _why_not(cur.fetchall(), rest)
        return [
            {"order_id": order_id, "why": why[order_id].kind, "reason": why[order_id].reason}
            for order_id in rest
        ]

    def peek_due(
        self,
        *,
        limit: int | None = None,
        order_ids: Sequence[str] | None = None,
    ) -> RunClaim:
        """What a claim would take, without taking it (a dry run changes nothing)."""
        with self._connected(), self._lock, self._conn, self._conn.cursor() as cur:
            cur.execute(
                _PEEK_SQL,
                {"limit": limit, "targeted": order_ids is not None,
                 "order_ids": list(order_ids or [])},
            )  # fmt: skip
            due = [row[0] for row in cur.fetchall()]
            not_taken = self._not_taken(cur, order_ids, due) if order_ids is not None else []
        return RunClaim([due] if due else [], not_taken)

    def run_claim(self, run: str) -> RunClaim | None:
        rows = self._run(
            "SELECT batches, not_taken, reclaimed_at IS NOT NULL FROM nontax.run_claim "
            "WHERE run_id = %s",
            (run,),
        )
        return RunClaim(*rows[0]) if rows else None

    def live_claims(self, run: str) -> list[tuple[str, bool, float]]:
        """Other runs' live leases on due orders: (run key, held by a try, seconds left); the
        key of a claim made before keys named their DAG is a bare run id."""
        return self._run(
            f"""
            SELECT claimed_by, held_by IS NOT NULL,
                   extract(epoch FROM max(claim_expires_at) - now())::float8
              FROM nontax.bill_order
             WHERE status IN {DUE_SQL} AND claim_expires_at > now() AND claimed_by <> %s
             GROUP BY 1, 2
            """,
            (run,),
        )

    def release_runs(self, run_ids: Sequence[str]) -> int:
        """End the claims of runs (by run key) that are no longer running (marked, failed,
        deleted while they held orders). A live hold of a task try is left to run out by itself."""
        if not run_ids:
            return 0
        return len(
            self._run(
                "UPDATE nontax.bill_order SET claimed_by = NULL, claim_expires_at = NULL "
                "WHERE claimed_by = ANY(%s) AND held_by IS NULL RETURNING 1",
                (list(run_ids),),
            )
        )

    def release(self, run: str, holder: str | None = None) -> int:
        """End the claims of the run `run` (its run key: never another DAG's run of the same
        run id), so that its orders still due are free for the next run. A hold ends with it
        when it ran out, or when it is `holder`'s (a try that is over ending its own); a live
        hold of another try (a zombie, maybe sending) is left to run out by itself."""
        rows = self._run(
            f"UPDATE nontax.bill_order SET {UNHOLD} WHERE claimed_by = %(run)s "
            "AND (held_by IS NULL OR claim_expires_at < now() OR held_by = %(holder)s) "
            "RETURNING 1",
            {"run": run, "holder": holder},
        )
        return len(rows)

    def hold_batch(
        self,
        holder: str,
        order_ids: Sequence[str],
        *,
        hold_s: float,
        include_needs_person: bool = False,
    ) -> HoldResult:
        """Hold a batch's orders for one task try (`holder`, claiming under its run's key);
        returns what it holds and why not the rest.

        Taken: due orders whose time has come (`not_before`), and with `include_needs_person`
        (a person cleared the task) `invalid` and `failed` ones too; never one that another
        run claims or another try holds while its lease is live."""
        workable = WORKABLE_SQL if include_needs_person else DUE_SQL
        rows = self._run(
            hold_sql(
                f"status IN {workable} "
                f"AND (status NOT IN {DUE_SQL} OR not_before IS NULL OR not_before <= now()) "
                f"AND NOT {REFUSAL_BLOCKS.format(table='bill_order')}"
            ),
            hold_params(holder, order_ids, hold_s),
        )
        held = dict(rows)
        return HoldResult(held, self.why_not_held([o for o in order_ids if o not in held]))

    def why_not_held(
        self, order_ids: Sequence[str], *, refusals: bool = True
    ) -> dict[str, NotHeld]:
        """Where each order stands for a try that does not hold it: who does, or why not (a
        pending refusal too, unless `refusals` is False: for the tries that carry them out)."""
        if not order_ids:
            return {}
        return _why_not(self._run(_WHY_SQL, (list(order_ids),)), order_ids, refusals=refusals)

    def renew_hold(self, holder: str, order_ids: Sequence[str], *, hold_s: float) -> set[str]:
        """Extend the hold on the orders this try still works on; returns those still held."""
        if not order_ids:
            return set()
        rows = self._run(
            "UPDATE nontax.bill_order "
            "SET claim_expires_at = now() + make_interval(secs => %s) "
            "WHERE order_id = ANY(%s) AND held_by = %s RETURNING order_id",
            (hold_s, list(order_ids), holder),
        )
        return {row[0] for row in rows}

    def end_hold(self, holder: str, order_ids: Sequence[str], *, lease_s: float) -> int:
        """The try is over: its unfinished orders go back to its run's claim (for the run's
        other steps and a retry), free again when the run ends or the lease runs out."""
        if not order_ids:
            return 0
        rows = self._run(
            "UPDATE nontax.bill_order SET held_by = NULL, "
            "claim_expires_at = now() + make_interval(secs => %s) "
            "WHERE order_id = ANY(%s) AND held_by = %s RETURNING 1",
            (lease_s, list(order_ids), holder),
        )
        return len(rows)
