"""The order store: every SQL statement the pipeline runs against the order database.

Operators, tools and tests go through `OrderStore`; nowhere else holds SQL about orders (but
`requests.contract` and `requests.store`, for the requests to refuse or void one). Its parts, one
idea each: `holds` (claims and holds) and `holders` (their keys and values), `loads`,
`writes` (write-backs), `history` (the one writer of the order's history, for both
pipelines), `quotas`, `reads`, `links` (the orders' authorisation links), and `sql` (what they
share); this module joins them over one connection.

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
  `requests.contract` (asking) and `requests.store` (carrying out).
Each write is one short autocommitted statement (with its history row), made the moment a
result is known, but for the media id of an upload: it goes in with the insert's result (one
statement instead of two), on its own only when the insert does not answer at once (`Upload`);
a write that loses its connection reconnects and is retried (each carries an id, so a retry of
a write that had in fact committed is recognised).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from wechat_nontax.store.holds import ClaimsAndHolds
from wechat_nontax.store.links import AuthLinkRecords
from wechat_nontax.store.loads import OrderLoads
from wechat_nontax.store.quotas import QuotaStops
from wechat_nontax.store.reads import Reads
from wechat_nontax.store.sql import OrderStoreError, is_connection_lost, prepared_statement
from wechat_nontax.store.writes import WriteBacks
from wechat_nontax.wechat.retry import Backoff

log = logging.getLogger(__name__)


class OrderStore(ClaimsAndHolds, OrderLoads, WriteBacks, QuotaStops, Reads, AuthLinkRecords):
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
            if not is_connection_lost(exc, self._conn):
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

    def _write(self, order_id: str, sql: str, params: dict[str, Any]) -> bool:
        """Run one write-back statement; True if it changed the order.

        A lost connection is reopened (with backoff, for `write_retry_s`) and the statement
        sent again; `last_write_id` tells whether the first one had in fact committed. When the
        database stays away, `OrderStoreError`: the caller stops sending."""
        write_id = uuid.uuid4().hex
        params = {**params, "write_id": write_id}
        backoff: Backoff | None = None
        delay, retried = 0.25, False
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
                    if not is_connection_lost(exc, self._conn):
                        raise
                    if self._reconnect is None:
                        raise self._lost(exc) from exc
                    # No answer to classify here, only a connection to reopen: the delay
                    # doubles on its own (no policy rule), the budget and wait are the loop's.
                    backoff = backoff or Backoff(
                        time.monotonic() + self._write_retry_s,
                        clock=time.monotonic,
                        sleep=self._sleep,
                    )
                    log.warning("order database connection lost (%s): reconnecting", exc)
                    retried = True
                    while not self._try_reconnect():
                        if not backoff.wait(delay):
                            self._gone = self._lost(exc)
                            raise self._gone from exc
                        delay = min(delay * 2, 5.0)

    def _execute_prepared(self, cur: Any, sql: str, params: dict[str, Any]) -> None:
        """A write-back as a prepared statement of this connection: Postgres parses and plans
        each kind once per connection instead of once per order (a third of the order
        database's CPU per write-back, `bench/batch_cpu.py`)."""
        statement = prepared_statement(sql)
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
