"""The order store: every SQL statement the pipeline runs against the order database.

Operators, tools and tests go through this module; nowhere else holds SQL about orders (but
`bill_requests` and `request_store`, for the requests to refuse or void one).

Who may write what:
- a run CLAIMS its due orders (`claimed_by`, a lease in `claim_expires_at`) and records the
  claim in `nontax.run_claim`; one task try then HOLDS each order while it works on it
  (`held_by`, the same lease, renewed on a timer), so a retry, a Clear or a zombie of the same
  batch cannot work on it at the same time;
- every write-back names the holder and the row version it read (`Hold`) and changes nothing
  when either is no longer true, except the one result that must never be lost: an inserted
  bill's code, which is written whoever holds the order (WeChat has no call to look it up);
- a finished order (`inserted`, `duplicate`, `rejected`, `refused`, `cancelled`) is never
  changed by a later answer;
- an order whose refusal is pending (`nontax.bill_request`), or was not carried out and not
  withdrawn, is neither claimed nor held by an issuing run, and a batch that holds it already
  leaves it to the refusal before its upload and insert. The requests' own statements are in
  `bill_requests` (asking) and `request_store` (carrying out).
Each write is one short autocommitted statement (with its history row), made the moment a
result is known, but for the media id of an upload: it goes in with the insert's result (one
statement instead of two), on its own only when the insert does not answer at once (`Upload`);
a write that loses its connection reconnects and is retried (each carries an id, so a retry of
a write that had in fact committed is recognised).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from wechat_nontax.issuing.bill import BILL_FIELDS, Order
from wechat_nontax.requests.contract import BLOCKS_ISSUING
from wechat_nontax.wechat.policy import Status, beijing_time

log = logging.getLogger(__name__)


def _sql_list(statuses: Iterable[str]) -> str:
    # Status names are the enum's own constants, never input: safe to spell into SQL.
    return "(" + ", ".join(f"'{s}'" for s in sorted(statuses)) + ")"


_DUE = _sql_list(Status.DUE)
# Never sent again nor changed by a write-back, a reload or a reset.
_SETTLED = _sql_list(Status.SETTLED)
_NEEDS_ATTENTION = _sql_list(Status.NEEDS_ATTENTION)
# What a person's re-run may work on: due orders and those a person may have fixed.
_WORKABLE = _sql_list((Status.DUE | Status.NEEDS_ATTENTION) - Status.SETTLED)
# A write-back that ends the order's journey for now also ends its claim and hold (the
# requests' write-backs too: `request_store`).
UNHOLD = "held_by = NULL, claimed_by = NULL, claim_expires_at = NULL"
# The inserted code is written over any state but one that knows the bill already: inserted
# (or from an older row version: mismatched), or inserted and then voided (cancelled).
_BILL_KNOWN_GUARD = "status NOT IN ('inserted', 'mismatched', 'cancelled')"
_LIVE_OWN_HOLD = "claimed_by = %(run_id)s AND held_by IS NOT NULL AND claim_expires_at > now()"
# Taking a hold, for both pipelines (a batch's orders, a request's order): the order has no
# live lease, or this try holds it already, or it is its own run's claim that no try holds.
_HOLDABLE = (
    "(claim_expires_at IS NULL OR claim_expires_at < now() OR held_by = %(holder)s "
    "OR (claimed_by = %(run)s AND held_by IS NULL))"
)
_HISTORY_COLUMNS = "order_id, run_id, step, outcome, errcode, errmsg, duration_ms"
# A write sent again after its connection was lost changes nothing if the first one committed
# (the row carries its id): many write-backs leave their guard true, and would count twice.
_NOT_THIS_WRITE = "last_write_id IS DISTINCT FROM %(write_id)s"


def _held_guard(holder: str, version: str) -> str:
    """A guarded write's condition: the try named by the parameter `holder` holds the order, at
    the row version `version`, and it is not finished."""
    return f"held_by = %({holder})s AND row_version = %({version})s AND status NOT IN {_SETTLED}"


def run_key(dag_id: str, run_id: str) -> str:
    """What a run's claims are made under (`claimed_by`, `nontax.run_claim`): Airflow's run ids
    are unique per DAG only (two DAGs scheduled at one instant share one), so it names the
    DAG. Neither a dag_id nor a run_id may hold `|`."""
    return f"{dag_id}|{run_id}"


def task_holder(ti: Any) -> str:
    """The holder one task try writes as (`held_by`):
    `{dag_id}|{run_id}|{task_id}|{map_index}|{try_number}`, from the task instance itself, so
    that every DAG's tries, whatever operator they run, are told apart."""
    return f"{run_key(ti.dag_id, ti.run_id)}|{ti.task_id}|{ti.map_index}|{ti.try_number}"


def claim_key(holder: str) -> str:
    """The run key a holder's try claims under: all but its task, map index and try number
    (a holder of the older four-part form, `{run_id}|...`, gives its bare run id)."""
    return holder.rsplit("|", 3)[0]


def split_run_key(key: str, default_dag_id: str) -> tuple[str, str]:
    """(dag_id, run_id) of a run key; a bare run id (an older claim) is `default_dag_id`'s."""
    dag_id, sep, run_id = key.partition("|")
    return (dag_id, run_id) if sep else (default_dag_id, key)


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order as the store holds it: the bill's data and where its journey stands."""

    order: Order
    status: str
    s_pdf_media_id: str | None
    pdf_uploaded_at: datetime | None
    attempts: int
    authorized_at: datetime
    row_version: int = 1
    auth_wait_since: datetime | None = None

    @property
    def order_id(self) -> str:
        return self.order.order_id


@dataclass(frozen=True, slots=True)
class Hold:
    """What a write-back expects: the task try holding the order and the row version it read."""

    holder: str
    version: int


@dataclass(frozen=True, slots=True)
class Upload:
    """A PDF uploaded for an order whose media id is not written yet: it is written in the same
    statement as the insert's result (`record_inserted`), guarded by the hold of the try that
    uploaded it. A media id lost in a crash only costs a new upload."""

    media_id: str
    hold: Hold
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    at: datetime
    run_id: str | None
    step: str
    outcome: str
    errcode: int | None
    errmsg: str | None
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class LoadResult:
    inserted: int
    updated: int
    unchanged: int  # identical, or finished and therefore never changed by a reload
    # Changed orders left as they are because a run holds them: (order_id, run_id).
    held: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class HoldResult:
    """A batch try's hold: the orders it holds (with the row version read) and, for the others,
    why not (`NotHeld`)."""

    held: dict[str, int]
    not_held: dict[str, NotHeld]


@dataclass(frozen=True, slots=True)
class NotHeld:
    kind: str  # unknown | finished | refusing | needs_person | not_yet | held | claimed
    reason: str
    holder: str | None = None
    seconds_left: float = 0.0


@dataclass(frozen=True, slots=True)
class QuotaStop:
    """A daily quota used up for one call of an appid, as `nontax.api_quota` records it: no
    such call before `until` (`seconds_left` from now, by the database's clock)."""

    api: str
    until: datetime
    seconds_left: float
    errcode: int | None
    errmsg: str | None

    def reason(self) -> str:
        """Why a call waits for it, for a person: the call, the answer, the reset (Beijing
        time, as WeChat counts the day)."""
        answer = f"errcode {self.errcode}: {self.errmsg}" if self.errcode is not None else "-"
        return (
            f"daily quota of {self.api} used up ({answer}): not sent before "
            f"{beijing_time(self.until)}, when it resets"
        )


@dataclass(frozen=True, slots=True)
class RunClaim:
    batches: list[list[str]]
    not_taken: list[dict[str, str]] = field(default_factory=list)
    reclaimed: bool = False

    @property
    def order_ids(self) -> list[str]:
        return [order_id for batch in self.batches for order_id in batch]


_ORDER_COLUMNS = ", ".join(BILL_FIELDS) + ", pdf_path"
# An order whose refusal is asked for (`bill_requests.BLOCKS_ISSUING`: pending, or ended
# without being carried out and not withdrawn) is not issued: the refusal was asked for to
# prevent exactly that. A probe of a small partial index per row (migration 0010).
_REFUSAL_BLOCKS = (
    "EXISTS (SELECT 1 FROM nontax.bill_request r WHERE r.order_id = {table}.order_id "
    f"AND r.kind = 'refuse' AND r.status IN {_sql_list(BLOCKS_ISSUING)})"
)
_TIME_HAS_COME = "(not_before IS NULL OR not_before <= now())"


class ClaimScope(StrEnum):
    """Which of the due orders a run claims."""

    DUE = "due"  # every due order (the daily issuing run)
    # Orders waiting for their payer's authorisation whose next look is due (`not_before`,
    # set AUTHORIZATION_RECHECK_S after each look): the frequent run of `nontax_waiting`.
    AUTHORIZATION_LOOK_DUE = "authorization_look_due"


# Each scope's rows, due now. The waiting rows are found through bill_order_status_updated_idx
# (status first): a run that finds none reads no row of the others.
_SCOPE_ROWS = {
    ClaimScope.DUE: f"status IN {_DUE} AND {_TIME_HAS_COME}",
    ClaimScope.AUTHORIZATION_LOOK_DUE: f"status = '{Status.AWAITING_AUTH}' AND {_TIME_HAS_COME}",
}
# The rows a claim takes, in claim order: due now, no live lease of anyone.
_CLAIMABLE = """
    FROM nontax.bill_order
    WHERE {scope}
      AND (claim_expires_at IS NULL OR claim_expires_at < now())
      AND NOT {refusal_blocks}
      AND (NOT %(targeted)s OR order_id = ANY(%(order_ids)s))
    ORDER BY authorized_at, order_id
    LIMIT %(limit)s
"""


def _claimable(scope: ClaimScope) -> str:
    return _CLAIMABLE.format(
        scope=_SCOPE_ROWS[scope], refusal_blocks=_REFUSAL_BLOCKS.format(table="bill_order")
    )


# Where an order's journey and lease stand, for why a claim or a hold did not take it.
_WHY_SQL = (
    "SELECT order_id, status, extract(epoch FROM not_before - now()), claimed_by, held_by, "
    "extract(epoch FROM claim_expires_at - now()), "
    f"{_REFUSAL_BLOCKS.format(table='bill_order')} FROM nontax.bill_order "
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
CLAIM_SQLS = {scope: _CLAIM_SQL.format(claimable=_claimable(scope)) for scope in ClaimScope}
# The daily run's claim, public so that the benchmark can EXPLAIN it.
CLAIM_SQL = CLAIM_SQLS[ClaimScope.DUE]
# What a dry run would claim: the same rows, read only.
_PEEK_SQLS = {scope: f"SELECT order_id {_claimable(scope)}" for scope in ClaimScope}

_QUOTA_COLUMNS = (
    "api, stopped_until, extract(epoch FROM stopped_until - now())::float8, errcode, errmsg"
)
# Records a daily quota answer for an appid's call (`api`) for `seconds`; a later answer never
# shortens a live stop. Shared with the token cache, which records its endpoint's quota under
# its own row lock.
QUOTA_STOP_SQL = f"""
    INSERT INTO nontax.api_quota AS q (appid, api, stopped_until, errcode, errmsg, run_id)
    VALUES (%(appid)s, %(api)s, now() + make_interval(secs => %(seconds)s),
            %(errcode)s, %(errmsg)s, %(run_id)s)
    ON CONFLICT (appid, api) DO UPDATE SET
        stopped_until = greatest(
            CASE WHEN q.stopped_until > now() THEN q.stopped_until END, excluded.stopped_until),
        errcode = excluded.errcode, errmsg = excluded.errmsg, run_id = excluded.run_id,
        stopped_at = now(), stop_count = q.stop_count + 1,
        stopped_since = CASE WHEN q.stopped_until > now() THEN q.stopped_since ELSE now() END
    RETURNING {_QUOTA_COLUMNS}
"""
_SELECT_ORDER = (
    f"SELECT {_ORDER_COLUMNS}, status, s_pdf_media_id, pdf_uploaded_at, attempts, authorized_at, "
    "row_version, auth_wait_since FROM nontax.bill_order"
)


# -- the Bills view's reads: each answers from indexes at a million orders (bench/bills_view.py
# measures them and shows their plans; tests/integration/test_bills_speed.py checks them) --------

# Orders by status from the kept counts (migration 0008): a handful of rows, whatever the size.
COUNTS_SQL = (
    "SELECT status, sum(orders) FROM nontax.bill_status_count GROUP BY status "
    "HAVING sum(orders) <> 0"
)
# One order and its whole history: the primary key, and (order_id, attempt_id).
ORDER_ROW_SQL = "SELECT * FROM nontax.bill_order WHERE order_id = %s"
HISTORY_SQL = (
    "SELECT attempt_id, at, run_id, step, outcome, errcode, errmsg, duration_ms "
    "FROM nontax.bill_attempt WHERE order_id = %s ORDER BY attempt_id"
)


@dataclass(frozen=True, slots=True)
class PageMark:
    """Where a page of the Bills view starts or ends: an order's last change and its id (the
    listing's order, newest first). Pages go on from it (keyset pagination), so the 1,000th page
    reads as few index entries as the first."""

    updated_at: datetime
    order_id: str


@dataclass(frozen=True, slots=True)
class BillsPage:
    """One page of the Bills view: the orders in `statuses` changed in [since, until), or of
    those the ones whose order_id, billing_no or billing_code is `search`; newest change first;
    the `limit` older than `after`, or the `limit` newer than `before`.

    A listing reads, per status, the newest entries of bill_order_status_updated_idx (status,
    updated_at, order_id) below the mark and within the days (an index-only scan that stops
    after `limit`), and merges them; a search probes the primary key, the (billing_no,
    billing_code) key and the billing_code index. Then the page's rows, and the last history
    row of each through (order_id, attempt_id)."""

    statuses: Sequence[str]
    since: datetime | None = None
    until: datetime | None = None
    search: str | None = None
    after: PageMark | None = None
    before: PageMark | None = None
    limit: int = 50

    def sql(self) -> tuple[str, dict[str, Any]] | None:
        """The statement and its parameters; None when no status is asked for."""
        statuses, since, until, search = self.statuses, self.since, self.until, self.search
        after, before, limit = self.after, self.before, self.limit
        if not statuses:
            return None
        params: dict[str, Any] = {"since": since, "until": until, "search": search, "limit": limit}
        where = []
        if since is not None:
            where.append("updated_at >= %(since)s")
        if until is not None:
            where.append("updated_at < %(until)s")
        newer = before is not None
        mark = before if newer else after
        if mark is not None:
            params.update(mark_at=mark.updated_at, mark_id=mark.order_id)
            side = ">" if newer else "<"
            where.append(f"(updated_at, order_id) {side} (%(mark_at)s, %(mark_id)s)")
        # Newer pages read upwards from their mark, then are turned round.
        direction = "ASC" if newer else "DESC"
        order = f"ORDER BY updated_at {direction}, order_id {direction} LIMIT %(limit)s"
        if search:
            params["statuses"] = sorted(set(statuses))
            found = " AND ".join([
                "(order_id = %(search)s OR billing_no = %(search)s OR billing_code = %(search)s)",
                "status = ANY(%(statuses)s)", *where,
            ])  # fmt: skip
            picked = f"SELECT order_id, updated_at FROM nontax.bill_order WHERE {found} {order}"
        else:
            branches = []
            for i, status in enumerate(sorted(set(statuses))):
                params[f"s{i}"] = status
                found = " AND ".join([f"status = %(s{i})s", *where])
                branches.append(
                    f"(SELECT order_id, updated_at FROM nontax.bill_order WHERE {found} {order})"
                )
            picked = f"SELECT * FROM ({' UNION ALL '.join(branches)}) branch {order}"
        sql = f"""
            WITH page AS ({picked})
            SELECT o.order_id, o.status, o.reason, o.last_errcode, o.last_errmsg, o.attempts,
                   o.fee, o.title, o.billing_no, o.billing_code, o.updated_at,
                   last.step AS last_step, last.at AS last_at, last.run_id AS last_run_id
              FROM page JOIN nontax.bill_order o USING (order_id)
              LEFT JOIN LATERAL (
                    SELECT a.step, a.at, a.run_id FROM nontax.bill_attempt a
                     WHERE a.order_id = o.order_id ORDER BY a.attempt_id DESC LIMIT 1
                   ) last ON true
             ORDER BY page.updated_at DESC, page.order_id DESC
        """
        return sql, params


class OrderStoreError(RuntimeError):
    """The connection to the order database is gone: nothing more can be recorded over it."""


def _stored(row: Sequence[Any]) -> StoredOrder:
    n = len(BILL_FIELDS) + 1
    return StoredOrder(Order(*row[:n]), *row[n:])


def _is_connection_lost(exc: BaseException, conn: psycopg2.extensions.connection) -> bool:
    """The connection (or the server behind it) is gone or cannot take writes any more: a
    failover that left us on a read-only standby counts too; a new connection may help."""
    return bool(conn.closed) or isinstance(
        exc,
        psycopg2.OperationalError
        | psycopg2.InterfaceError
        | psycopg2.errors.ReadOnlySqlTransaction,
    )


def why_not_taken(
    status: str | None,
    *,
    due_in_s: float | None,
    claimed_by: str | None,
    held_by: str | None,
    lease_left_s: float | None,
    refusal_pending: bool = False,
) -> NotHeld:
    """Why an order a run asked for was not taken (pure: the caller read the row)."""
    if status is None:
        return NotHeld("unknown", "unknown order: not in the order table")
    if status in Status.SETTLED:
        return NotHeld("finished", f"already {status}: never sent again")
    if refusal_pending:
        return NotHeld(
            "refusing",
            "a refusal of it is pending, or was not carried out and waits for a person to "
            "withdraw it or ask again: it is not issued",
        )
    if status in Status.NEEDS_ATTENTION:
        return NotHeld(
            "needs_person",
            f"{status}: needs a person; fix the cause, then reset it (make it due again) or "
            "clear the batch that holds it",
        )
    if lease_left_s is not None and lease_left_s > 0:
        if held_by:
            return NotHeld("held", f"held by {held_by} right now", held_by, lease_left_s)
        return NotHeld("claimed", f"claimed by run {claimed_by}", claimed_by, lease_left_s)
    if due_in_s is not None and due_in_s > 0:
        return NotHeld("not_yet", f"{status}: not due for another {due_in_s / 60:.0f} min")
    return NotHeld("claimed", "being claimed by another run at this moment")


def _why_not(rows: Sequence[tuple], order_ids: Sequence[str]) -> dict[str, NotHeld]:
    """`why_not_taken` of each of `order_ids`, from the rows `_WHY_SQL` read (none: unknown)."""
    found = {row[0]: row[1:] for row in rows}
    reasons = {}
    for order_id in order_ids:
        status, due_in, claimed_by, held_by, left, refusing = found.get(order_id, (None,) * 6)
        reasons[order_id] = why_not_taken(
            status, due_in_s=due_in and float(due_in), claimed_by=claimed_by,
            held_by=held_by, lease_left_s=left and float(left), refusal_pending=bool(refusing),
        )  # fmt: skip
    return reasons


@dataclass(frozen=True)
class PreparedStatement:
    """A statement with `%(name)s` parameters as PREPARE and EXECUTE: `$n` in the order the
    names first appear (`params`)."""

    name: str
    prepare: str
    execute: str
    params: tuple[str, ...]


_NAMED_PARAM = re.compile(r"%\((\w+)\)s")


@functools.lru_cache(maxsize=64)
def _prepared_statement(sql: str) -> PreparedStatement:
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    # psycopg2 reads `%%` as a literal `%` only when it formats; PREPARE is sent as it is.
    body = _NAMED_PARAM.sub(positional, sql).replace("%%", "%")
    name = "nontax_write_" + hashlib.sha256(sql.encode()).hexdigest()[:16]
    arguments = f" ({', '.join(['%s'] * len(names))})" if names else ""
    return PreparedStatement(
        name=name,
        prepare=f"PREPARE {name} AS {body}",
        execute=f"EXECUTE {name}{arguments}",
        params=tuple(names),
    )


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


class OrderStore:
    """The order table and its history over one connection, shared safely by a task's threads.

    `reconnect` (a callable that opens a new connection) lets a write that lost its connection
    reconnect and try again, with backoff, for up to `write_retry_s` seconds; without it a lost
    connection raises `OrderStoreError` at once."""

    def __init__(
        self,
        conn: psycopg2.extensions.connection,
        *,
        reconnect: Callable[[], psycopg2.extensions.connection] | None = None,
        write_retry_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        conn.autocommit = True
        self._conn = conn
        self._reconnect = reconnect
        self._write_retry_s = write_retry_s
        self._sleep = sleep
        self._gone: OrderStoreError | None = None
        # psycopg2 connections serialise statements anyway; the lock keeps a statement and the
        # reading of its results together when several threads of a batch report at once.
        self._lock = threading.Lock()
        self._prepared: set[str] = set()  # the write-backs prepared on this connection
        self._unpreparable: set[str] = set()  # statements Postgres cannot prepare untyped
        self._prepare = True

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def _connected(self) -> Iterator[None]:
        """Name a lost connection for what it is (psycopg2 says "connection already closed")."""
        try:
            yield
        except psycopg2.Error as exc:
            if not _is_connection_lost(exc, self._conn):
                raise
            raise self._lost(exc) from exc

    def _lost(self, exc: BaseException) -> OrderStoreError:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return OrderStoreError(
            f"lost the connection to the order database ({first_line}): nothing after this "
            "was recorded; once the database answers, clear the task (or run the tool again)"
        )

    def _run(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple]:
        """One statement in its own transaction. The reads and the claim/hold statements are
        safe to send again: on a lost connection they are, once, over a new one."""
        try:
            return self._run_once(sql, params)
        except OrderStoreError:
            if self._reconnect is None or self._gone is not None:
                raise
            with self._lock:
                if self._conn.closed:
                    self._try_reconnect()
            return self._run_once(sql, params)

    def _run_once(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[tuple]:
        with self._connected(), self._lock, self._conn, self._conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    # -- loading ----------------------------------------------------------------------------

    def upsert_orders(self, orders: Iterable[Order], *, run_id: str | None = None) -> LoadResult:
        """Insert new orders as authorized; update changed ones that are not finished.

        A reload never touches an order that is inserted, a duplicate or rejected, nor one that
        a run holds right now (it would send the copy it read and record the result on the
        changed row): those are listed in `held`, to be loaded again once the run ended. A
        changed order starts its journey again: a new row version, no media id (it belonged to
        the old data), the authorisation wait from zero; the change goes into its history.
        """
        orders = list(orders)
        rows = [
            (o.order_id, o.card_id, o.appid, o.fee, o.title, o.billing_time, o.billing_no,
             o.billing_code, o.pdf_path)
            for o in orders
        ]  # fmt: skip
        if not rows:
            return LoadResult(0, 0, 0)
        with self._lock, self._conn, self._conn.cursor() as cur:
            returned = self._upsert(cur, rows)
            history = [(order_id, run_id, "load", "new" if is_new else "changed")
                       for order_id, is_new in returned]  # fmt: skip
            psycopg2.extras.execute_values(
                cur,
                "INSERT INTO nontax.bill_attempt (order_id, run_id, step, outcome) VALUES %s",
                history,
            )
            held = self._held_and_changed(cur, orders, {order_id for order_id, _ in returned})
        inserted = sum(1 for _, is_new in returned if is_new)
        updated = len(returned) - inserted
        return LoadResult(inserted, updated, len(rows) - len(returned) - len(held), tuple(held))

    @staticmethod
    def _upsert(cur: psycopg2.extensions.cursor, rows: list[tuple]) -> list[tuple[str, bool]]:
        return psycopg2.extras.execute_values(
            cur,
            f"""
            INSERT INTO nontax.bill_order AS o ({_ORDER_COLUMNS})
            VALUES %s
            ON CONFLICT (order_id) DO UPDATE SET
                card_id = EXCLUDED.card_id, appid = EXCLUDED.appid, fee = EXCLUDED.fee,
                title = EXCLUDED.title, billing_time = EXCLUDED.billing_time,
                billing_no = EXCLUDED.billing_no, billing_code = EXCLUDED.billing_code,
                pdf_path = EXCLUDED.pdf_path,
                status = 'authorized', reason = NULL, not_before = NULL,
                s_pdf_media_id = NULL, pdf_uploaded_at = NULL, auth_wait_since = NULL,
                row_version = o.row_version + 1,
                last_errcode = NULL, last_errmsg = NULL, updated_at = now(),
                -- a try whose hold ran out must not renew it on the new version
                held_by = NULL, claimed_by = NULL, claim_expires_at = NULL
            WHERE o.status NOT IN {_SETTLED}
              AND (o.claim_expires_at IS NULL OR o.claim_expires_at < now())
              AND (o.card_id, o.appid, o.fee, o.title, o.billing_time, o.billing_no,
                   o.billing_code, o.pdf_path)
                  IS DISTINCT FROM
                  (EXCLUDED.card_id, EXCLUDED.appid, EXCLUDED.fee, EXCLUDED.title,
                   EXCLUDED.billing_time, EXCLUDED.billing_no, EXCLUDED.billing_code,
                   EXCLUDED.pdf_path)
            RETURNING order_id, (xmax = 0) AS is_new
            """,
            rows,
            page_size=1000,
            fetch=True,
        )

    @staticmethod
    def _held_and_changed(
        cur: psycopg2.extensions.cursor, orders: list[Order], written: set[str]
    ) -> list[tuple[str, str]]:
        """Of the orders the upsert left alone, those that differ and are held by a run."""
        rest = [o for o in orders if o.order_id not in written]
        if not rest:
            return []
        cur.execute(
            f"SELECT {_ORDER_COLUMNS}, claimed_by FROM nontax.bill_order "
            f"WHERE order_id = ANY(%s) AND status NOT IN {_SETTLED} "
            "AND claim_expires_at >= now()",
            ([o.order_id for o in rest],),
        )
        n = len(BILL_FIELDS) + 1
        stored = {row[0]: (Order(*row[:n]), row[n]) for row in cur.fetchall()}
        return [
            (o.order_id, stored[o.order_id][1])
            for o in rest
            if o.order_id in stored and stored[o.order_id][0] != o
        ]

    # -- claiming (a run) -------------------------------------------------------------------

    def claim_run(
        self,
        run: str,
        *,
        lease_s: int,
        split: Callable[[list[str]], list[list[str]]],
        limit: int | None = None,
        order_ids: Sequence[str] | None = None,
        scope: ClaimScope = ClaimScope.DUE,
    ) -> RunClaim:
        """Claim the run's due orders (those of `scope`), split them into batches and record
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
                CLAIM_SQLS[scope],
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
        scope: ClaimScope = ClaimScope.DUE,
    ) -> list[str]:
        """`claim_run` in one batch: the claimed order ids in claim order."""
        split = lambda claimed: [claimed] if claimed else []  # noqa: E731
        claim = self.claim_run(
            run, lease_s=lease_s, split=split, limit=limit, order_ids=order_ids, scope=scope
        )
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
             WHERE order_id = ANY(%(ids)s) AND status IN {_WORKABLE}
               AND NOT {_REFUSAL_BLOCKS.format(table="bill_order")}
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
        scope: ClaimScope = ClaimScope.DUE,
    ) -> RunClaim:
        """What a claim would take, without taking it (a dry run changes nothing)."""
        with self._connected(), self._lock, self._conn, self._conn.cursor() as cur:
            cur.execute(
                _PEEK_SQLS[scope],
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
             WHERE status IN {_DUE} AND claim_expires_at > now() AND claimed_by <> %s
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

    # -- holding (a task try of either pipeline) ----------------------------------------------

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
        workable = _WORKABLE if include_needs_person else _DUE
        rows = self._run(
            hold_sql(
                f"status IN {workable} "
                f"AND (status NOT IN {_DUE} OR not_before IS NULL OR not_before <= now()) "
                f"AND NOT {_REFUSAL_BLOCKS.format(table='bill_order')}"
            ),
            hold_params(holder, order_ids, hold_s),
        )
        held = dict(rows)
        return HoldResult(held, self.why_not_held([o for o in order_ids if o not in held]))

    def why_not_held(self, order_ids: Sequence[str]) -> dict[str, NotHeld]:
        """Where each order stands for a try that does not hold it: who does, or why not."""
        return _why_not(self._run(_WHY_SQL, (list(order_ids),)), order_ids) if order_ids else {}

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

    # -- reading ----------------------------------------------------------------------------

    def get_orders(self, order_ids: Sequence[str]) -> list[StoredOrder]:
        rows = self._run(f"{_SELECT_ORDER} WHERE order_id = ANY(%s)", (list(order_ids),))
        by_id = {row[0]: _stored(row) for row in rows}
        return [by_id[order_id] for order_id in order_ids if order_id in by_id]

    def get_row(self, order_id: str) -> dict[str, Any] | None:
        """Every column of one order (tools and tests)."""
        with (
            self._lock,
            self._conn,
            self._conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
        ):
            cur.execute(ORDER_ROW_SQL, (order_id,))
            row = cur.fetchone()
        return dict(row) if row else None

    def history(self, order_id: str) -> list[Attempt]:
        rows = self._run(
            "SELECT at, run_id, step, outcome, errcode, errmsg, duration_ms "
            "FROM nontax.bill_attempt WHERE order_id = %s ORDER BY attempt_id",
            (order_id,),
        )
        return [Attempt(*row) for row in rows]

    def needs_attention(self, limit: int = 1000) -> list[tuple[str, str, str, datetime]]:
        """(order_id, status, reason, updated_at) of the orders a person must look at."""
        return self._run(
            f"SELECT order_id, status, reason, updated_at FROM nontax.bill_order "
            f"WHERE status IN {_NEEDS_ATTENTION} ORDER BY updated_at LIMIT %s",
            (limit,),
        )

    def attention_of(self, order_ids: Sequence[str]) -> list[tuple[str, str, str]]:
        """(order_id, status, reason) of those of `order_ids` that need a person."""
        return self._run(
            f"SELECT order_id, status, reason FROM nontax.bill_order "
            f"WHERE order_id = ANY(%s) AND status IN {_NEEDS_ATTENTION} ORDER BY order_id",
            (list(order_ids),),
        )

    def refusal_pending(self, order_ids: Sequence[str]) -> dict[str, str]:
        """Those of `order_ids` that are due and whose refusal keeps them off issuing, with
        their status: not issued, and not left unfinished either (the requests DAG ends them,
        or a person decides)."""
        rows = self._run(
            f"SELECT order_id, status FROM nontax.bill_order WHERE order_id = ANY(%s) "
            f"AND status IN {_DUE} AND {_REFUSAL_BLOCKS.format(table='bill_order')}",
            (list(order_ids),),
        )
        return dict(rows)

    def count_by_status(self, order_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Orders by status (statuses with none left out): of `order_ids`, or of the whole
        table from the kept counts (migration 0008), exact and as cheap at a million orders as
        at ten."""
        if order_ids is None:
            rows = self._run(COUNTS_SQL)
        else:
            rows = self._run(
                "SELECT status, count(*) FROM nontax.bill_order "
                "WHERE order_id = ANY(%s) GROUP BY status",
                (list(order_ids),),
            )
        return {status: int(n) for status, n in rows}

    # -- writing results --------------------------------------------------------------------

    def _write(self, order_id: str, sql: str, params: dict[str, Any]) -> bool:
        """Run one write-back statement; True if it changed the order.

        A lost connection is reopened (with backoff, for `write_retry_s`) and the statement
        sent again; `last_write_id` tells whether the first one had in fact committed. When the
        database stays away, `OrderStoreError`: the caller stops sending."""
        write_id = uuid.uuid4().hex
        params = {**params, "write_id": write_id}
        deadline, delay, retried = None, 0.25, False
        while True:
            if self._gone is not None:
                raise self._gone
            with self._lock:
                try:
                    with self._conn.cursor() as cur:
                        self._execute_prepared(cur, sql, params)
                        if cur.rowcount > 0 or not retried:
                            return cur.rowcount > 0
                        cur.execute(
                            "SELECT last_write_id FROM nontax.bill_order WHERE order_id = %s",
                            (order_id,),
                        )
                        row = cur.fetchone()
                        return bool(row and row[0] == write_id)
                except psycopg2.Error as exc:
                    if not _is_connection_lost(exc, self._conn):
                        raise
                    if self._reconnect is None:
                        raise self._lost(exc) from exc
                    deadline = deadline or time.monotonic() + self._write_retry_s
                    log.warning("order database connection lost (%s): reconnecting", exc)
                    retried = True
                    while not self._try_reconnect():
                        if time.monotonic() + delay > deadline:
                            self._gone = self._lost(exc)
                            raise self._gone from exc
                        self._sleep(delay)
                        delay = min(delay * 2, 5.0)

    def _execute_prepared(self, cur: Any, sql: str, params: dict[str, Any]) -> None:
        """A write-back as a prepared statement of this connection: Postgres parses and plans
        each kind once per connection instead of once per order (a third of the order
        database's CPU per write-back, `bench/batch_cpu.py`)."""
        statement = _prepared_statement(sql)
        if not self._prepare or statement.name in self._unpreparable:
            cur.execute(sql, params)
            return
        try:
            if statement.name not in self._prepared:
                try:
                    cur.execute(statement.prepare)
                except psycopg2.errors.DuplicatePreparedStatement:
                    pass  # a pooled server connection that has it already
                except (psycopg2.errors.IndeterminateDatatype, psycopg2.errors.DatatypeMismatch):
                    # A parameter whose type only its value tells (`%(x)s IS NULL`): sent in
                    # full, where psycopg2 writes the value in.
                    log.warning("a write-back cannot be prepared, sent in full: %s", sql[:80])
                    self._unpreparable.add(statement.name)
                    cur.execute(sql, params)
                    return
                self._prepared.add(statement.name)
            cur.execute(statement.execute, [params[name] for name in statement.params])
        except psycopg2.errors.InvalidSqlStatementName:
            # Prepared on one server connection, executed on another: a pooler between (PgBouncer
            # in transaction mode). Nothing was written; plain statements from now on.
            log.warning("the order database forgets prepared statements: sending them in full")
            self._prepare = False
            cur.execute(sql, params)

    def _try_reconnect(self) -> bool:
        try:
            conn = self._reconnect()
        except psycopg2.Error:
            return False
        conn.autocommit = True
        with contextlib.suppress(psycopg2.Error):
            self._conn.close()
        self._conn = conn
        self._prepared = set()
        return True

    def _record(
        self,
        order_id: str,
        assignments: str,
        params: dict[str, Any],
        *,
        hold: Hold | None,
        run_id: str | None,
        step: str,
        outcome: str,
        errcode: int | None = None,
        errmsg: str | None = None,
        duration_ms: int | None = None,
        counts_attempt: bool = True,
        upload: Upload | None = None,
        also: str = "TRUE",
    ) -> bool:
        """Update one order and append its history row in one statement, only while `hold` is
        true (this try holds the order, at the row version it read, and it is not finished)
        and `also`; `hold=None` is for the inserted code alone (see `record_inserted`). True if
        written.

        With `upload`, the same statement writes the upload's media id (and its history row,
        first) where `record_uploaded` would have: while the upload's hold is true."""
        attempt = ", attempts = attempts + 1" if counts_attempt else ""
        guard = _held_guard("holder", "version") if hold is not None else _BILL_KNOWN_GUARD
        guard = f"{guard} AND {also}"
        history = {
            "order_id": order_id, "run_id": run_id, "step": step, "outcome": outcome,
            "errcode": errcode, "errmsg": errmsg, "duration_ms": duration_ms,
            "holder": hold.holder if hold else None, "version": hold.version if hold else None,
        }  # fmt: skip
        row = "%(step)s, %(outcome)s, %(errcode)s::integer, %(errmsg)s, %(duration_ms)s::integer"
        if upload is None:
            return self._write(
                order_id,
                f"WITH changed AS (UPDATE nontax.bill_order SET {assignments}{attempt}, "
                "updated_at = now(), last_write_id = %(write_id)s "
                f"WHERE order_id = %(order_id)s AND {guard} AND {_NOT_THIS_WRITE} "
                "RETURNING order_id) "
                f"INSERT INTO nontax.bill_attempt ({_HISTORY_COLUMNS}) "
                f"SELECT order_id, %(run_id)s, {row} FROM changed",
                {**params, **history},
            )
        # The upload's part is evaluated against the row as it was (SET sees the old row); the
        # media id is unique to its upload, so finding it in the new row says it was written.
        uploaded = _held_guard("up_holder", "up_version")
        return self._write(
            order_id,
            f"WITH changed AS (UPDATE nontax.bill_order SET {assignments}, "
            f"attempts = attempts + {int(counts_attempt)} "
            f"+ CASE WHEN {uploaded} THEN 1 ELSE 0 END, "
            f"s_pdf_media_id = CASE WHEN {uploaded} THEN %(media_id)s ELSE s_pdf_media_id END, "
            f"pdf_uploaded_at = CASE WHEN {uploaded} THEN now() ELSE pdf_uploaded_at END, "
            "updated_at = now(), last_write_id = %(write_id)s "
            f"WHERE order_id = %(order_id)s AND {guard} AND {_NOT_THIS_WRITE} "
            "RETURNING order_id, s_pdf_media_id IS NOT DISTINCT FROM %(media_id)s AS uploaded) "
            f"INSERT INTO nontax.bill_attempt ({_HISTORY_COLUMNS}) "
            "SELECT order_id, %(run_id)s, h.step, h.outcome, h.errcode, h.errmsg, h.duration_ms "
            "FROM changed, (VALUES "
            "(1, 'upload', 'uploaded', NULL::integer, NULL::text, %(up_ms)s::integer), "
            f"(2, {row})) h (n, step, outcome, errcode, errmsg, duration_ms) "
            "WHERE h.n = 2 OR changed.uploaded ORDER BY h.n",
            {
                **params, **history, "media_id": upload.media_id, "up_ms": upload.duration_ms,
                "up_holder": upload.hold.holder, "up_version": upload.hold.version,
            },
        )  # fmt: skip

    def record_uploaded(
        self,
        order_id: str,
        media_id: str,
        *,
        hold: Hold,
        run_id: str | None,
        duration_ms: int | None = None,
    ) -> bool:
        return self._record(
            order_id,
            "status = 'uploaded', s_pdf_media_id = %(media_id)s, pdf_uploaded_at = now(), "
            "reason = NULL, last_errcode = NULL, last_errmsg = NULL",
            {"media_id": media_id},
            hold=hold, run_id=run_id, step="upload", outcome="uploaded", duration_ms=duration_ms,
        )  # fmt: skip

    def record_inserted(
        self,
        order_id: str,
        code: str,
        openid: str,
        *,
        version: int,
        run_id: str | None,
        duration_ms: int | None = None,
        step: str = "insert",
        upload: Upload | None = None,
    ) -> str | None:
        """The bill is in the payer's card package: its code and openid are written whoever
        holds the order now, over any state but one that knows the bill (a `duplicate` recorded
        by another try learns its code), since they cannot be had again. Returns the status
        written: `inserted`; `mismatched` when the row changed after the `version` that was sent
        (a reload after the try's hold ran out): WeChat holds the old data, a person must
        decide (the reason says so); None when nothing was written. `upload`: the media id the
        bill was inserted with, not written yet (written in the same statement)."""
        bill = (
            "code = %(code)s, openid = %(openid)s, inserted_at = now(), not_before = NULL, "
            f"last_errcode = 0, last_errmsg = 'ok', {UNHOLD}"
        )
        params = {"code": code, "openid": openid, "sent": version}
        common = {"hold": None, "run_id": run_id, "step": step, "duration_ms": duration_ms}
        if self._record(
            order_id, f"status = 'inserted', reason = NULL, {bill}", params,
            outcome=Status.INSERTED, upload=upload, also="row_version = %(sent)s", **common,
        ):  # fmt: skip
            return Status.INSERTED
        # Rare (a reload landed while the insert was at WeChat): a second statement.
        if self._record(
            order_id,
            "status = 'mismatched', reason = 'the bill in the card package carries row version "
            "' || %(sent)s || ' of this order, but the row changed to version ' || row_version "
            "|| ' while it was sent, and that change never reached WeChat: compare the bill with "
            f"the order; if the bill is wrong, void it (make void)', {bill}",
            params, outcome=Status.MISMATCHED, upload=upload, also="row_version <> %(sent)s",
            **common,
        ):  # fmt: skip
            return Status.MISMATCHED
        return None

    def record_end(
        self,
        order_id: str,
        status: str,
        reason: str,
        *,
        hold: Hold,
        run_id: str | None,
        step: str,
        errcode: int | None = None,
        errmsg: str | None = None,
        not_before_s: float | None = None,
        duration_ms: int | None = None,
        counts_attempt: bool = True,
    ) -> bool:
        """The order ends this step in `status` (invalid, failed, rejected, duplicate, or back
        to waiting) with a reason a person can act on; its claim and hold end with it."""
        return self._record(
            order_id,
            "status = %(status)s, reason = %(reason)s, "
            "last_errcode = coalesce(%(errcode)s, last_errcode), "
            "last_errmsg = coalesce(%(errmsg)s, last_errmsg), "
            "auth_wait_since = CASE WHEN %(status)s = 'awaiting_auth' "
            "                  THEN coalesce(auth_wait_since, now()) ELSE auth_wait_since END, "
            "not_before = CASE WHEN %(not_before_s)s::float8 IS NULL THEN NULL "
            f"             ELSE now() + make_interval(secs => %(not_before_s)s) END, {UNHOLD}",
            {
                "status": status,
                "reason": reason,
                "errcode": errcode,
                "errmsg": errmsg,
                "not_before_s": not_before_s,
            },
            hold=hold, run_id=run_id, step=step, outcome=status, errcode=errcode, errmsg=errmsg,
            duration_ms=duration_ms, counts_attempt=counts_attempt,
        )  # fmt: skip

    def record_transient(
        self,
        order_id: str,
        *,
        hold: Hold,
        run_id: str | None,
        step: str,
        outcome: str,
        errcode: int | None,
        errmsg: str | None,
        not_before_s: float | None = None,
        duration_ms: int | None = None,
    ) -> bool:
        """A call failed in a way that may pass: the order stays due; the history says why."""
        return self._record(
            order_id,
            "last_errcode = %(errcode)s, last_errmsg = %(errmsg)s, "
            "not_before = CASE WHEN %(not_before_s)s::float8 IS NULL THEN not_before "
            "             ELSE now() + make_interval(secs => %(not_before_s)s) END",
            {"errcode": errcode, "errmsg": errmsg, "not_before_s": not_before_s},
            hold=hold, run_id=run_id, step=step, outcome=outcome, errcode=errcode, errmsg=errmsg,
            duration_ms=duration_ms,
        )  # fmt: skip

    def forget_media(self, order_id: str, *, hold: Hold, run_id: str | None, reason: str) -> bool:
        """WeChat no longer knows the media id: the PDF must be uploaded again."""
        return self._record(
            order_id,
            "status = 'authorized', s_pdf_media_id = NULL, pdf_uploaded_at = NULL",
            {},
            hold=hold, run_id=run_id, step="upload", outcome="media_expired", errmsg=reason,
            counts_attempt=False,
        )  # fmt: skip

    def record_authorized(
        self,
        order_id: str,
        invoice_status: str,
        *,
        hold: Hold,
        run_id: str | None,
        duration_ms: int | None = None,
    ) -> bool:
        """getauthdata says the payer has authorised the waiting order: it is due for its insert
        now (the wait's start stays, so a later 72038 still counts from it)."""
        return self._record(
            order_id,
            "status = CASE WHEN status <> 'awaiting_auth' THEN status "
            "              WHEN s_pdf_media_id IS NOT NULL AND pdf_uploaded_at IS NOT NULL "
            "              THEN 'uploaded' ELSE 'authorized' END, "
            "reason = NULL, not_before = NULL",
            {},
            hold=hold, run_id=run_id, step="authorization", outcome="authorized",
            errmsg=invoice_status, duration_ms=duration_ms,
        )  # fmt: skip

    def record_quota_wait(
        self,
        order_id: str,
        *,
        hold: Hold,
        run_id: str | None,
        step: str,
        errcode: int | None,
        errmsg: str,
        not_before_s: float,
    ) -> bool:
        """Not sent because the daily quota of its next call is used up: the order stays due,
        not before the quota resets; no attempt is counted (nothing reached WeChat)."""
        return self._record(
            order_id,
            "last_errcode = coalesce(%(errcode)s, last_errcode), last_errmsg = %(errmsg)s, "
            "not_before = now() + make_interval(secs => %(not_before_s)s)",
            {"errcode": errcode, "errmsg": errmsg, "not_before_s": not_before_s},
            hold=hold, run_id=run_id, step=step, outcome="quota", errcode=errcode,
            errmsg=errmsg, counts_attempt=False,
        )  # fmt: skip

    def leave_to_refusal(
        self, order_id: str, reason: str, *, hold: Hold, run_id: str | None
    ) -> bool:
        """Before an order's first call: when a refusal of it was asked since its batch took
        it, the batch leaves it to the refusal: its claim and hold end (the requests run takes
        it next), nothing is sent. True if so. One statement: the refusal's probe (a partial
        index) and the order's primary key; it writes only when a refusal is there."""
        return self._record(
            order_id,
            UNHOLD,
            {},
            hold=hold, run_id=run_id, step="request", outcome="left_to_refusal",
            errmsg=reason, counts_attempt=False, also=_REFUSAL_BLOCKS.format(table="bill_order"),
        )  # fmt: skip

    # -- daily quotas (shared by every batch, run and worker) -------------------------------

    def record_quota_stop(
        self,
        appid: str,
        api: str,
        *,
        seconds: float,
        errcode: int | None,
        errmsg: str | None,
        run_id: str | None,
    ) -> QuotaStop:
        """WeChat said the daily quota of `api` is used up: no batch calls it for `seconds`
        (until the quota resets). A later stop never shortens an earlier one. Safe to send
        twice."""
        rows = self._run(
            QUOTA_STOP_SQL,
            {
                "appid": appid, "api": api, "seconds": seconds, "errcode": errcode,
                "errmsg": errmsg, "run_id": run_id,
            },
        )  # fmt: skip
        return QuotaStop(*rows[0])

    def live_quota_stops(self) -> list[tuple[str, QuotaStop]]:
        """Every daily quota stop in force, of any appid: (appid, stop), for the person on duty."""
        rows = self._run(
            f"SELECT appid, {_QUOTA_COLUMNS} FROM nontax.api_quota WHERE stopped_until > now() "
            "ORDER BY appid, api"
        )
        return [(row[0], QuotaStop(*row[1:])) for row in rows]

    def quota_stops(self, appid: str, apis: Iterable[str]) -> dict[str, QuotaStop]:
        """The calls among `apis` whose daily quota is used up now, by api."""
        rows = self._run(
            f"SELECT {_QUOTA_COLUMNS} FROM nontax.api_quota "
            "WHERE appid = %s AND api = ANY(%s) AND stopped_until > now()",
            (appid, list(apis)),
        )
        return {row[0]: QuotaStop(*row) for row in rows}

    def reset(self, order_id: str, *, note: str = "reset by operator") -> bool:
        """Make an order due again after a person fixed its data (never a finished one, nor
        one a task try holds right now: it may be sending it). The authorisation wait starts
        afresh; a run that only claimed it reads the new version when its batch holds it."""
        with self._lock, self._conn, self._conn.cursor() as cur:
            cur.execute(
                f"""
                UPDATE nontax.bill_order
                   SET status = 'authorized', reason = NULL, not_before = NULL,
                       s_pdf_media_id = NULL, pdf_uploaded_at = NULL, auth_wait_since = NULL,
                       row_version = row_version + 1, {UNHOLD}, updated_at = now()
                 WHERE order_id = %s AND status NOT IN {_SETTLED}
                   AND (held_by IS NULL OR claim_expires_at < now())
                RETURNING 1
                """,
                (order_id,),
            )
            if not cur.fetchone():
                return False
            cur.execute(
                "INSERT INTO nontax.bill_attempt (order_id, step, outcome, errmsg) "
                "VALUES (%s, 'reset', 'authorized', %s)",
                (order_id, note),
            )
        return True

    # -- the Bills view in the Airflow UI ---------------------------------------------------

    def bills_page(self, page: BillsPage) -> list[dict[str, Any]]:
        """The orders of one page of the Bills view, each with its last history row (step,
        when, run)."""
        query = page.sql()
        if query is None:
            return []
        with (
            self._lock,
            self._conn,
            self._conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
        ):
            cur.execute(*query)
            return [dict(row) for row in cur.fetchall()]

    def history_rows(self, order_id: str) -> list[dict[str, Any]]:
        """The order's whole history, oldest first, every column (the Bills view)."""
        with (
            self._lock,
            self._conn,
            self._conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
        ):
            cur.execute(HISTORY_SQL, (order_id,))
            return [dict(row) for row in cur.fetchall()]

    def batch_of(self, dag_id: str, run_id: str, order_id: str) -> int | None:
        """The map index of the issuing batch of the run that had `order_id` (its position in
        the run's claim, which the batches are mapped over); None when no claim of that run
        names it, or more than one does. A claim made before claims named their DAG is keyed
        by the bare run id."""
        rows = self._run(
            "SELECT DISTINCT b.i - 1 FROM nontax.run_claim c, "
            "jsonb_array_elements(c.batches) WITH ORDINALITY AS b (batch, i) "
            "WHERE c.run_id IN (%s, %s) AND b.batch ? %s",
            (run_key(dag_id, run_id), run_id, order_id),
        )
        return rows[0][0] if len(rows) == 1 else None

    def record_operator_action(
        self, order_id: str, *, outcome: str, note: str, run_id: str | None = None
    ) -> bool:
        """A person's action on the order (from the Bills view), in its history; False if
        there is no such order."""
        rows = self._run(
            "INSERT INTO nontax.bill_attempt (order_id, run_id, step, outcome, errmsg) "
            "SELECT order_id, %s, 'operator', %s, %s FROM nontax.bill_order "
            "WHERE order_id = %s RETURNING 1",
            (run_id, outcome, note, order_id),
        )
        return bool(rows)
