"""The write of a verified event into the order store: nontax.record_authorization_event, which
records it and applies it to its order in one transaction (or keeps it for an order not loaded
yet), with short connect and statement timeouts so that a slow database is noticed in time."""

from __future__ import annotations

import threading

import psycopg2
import psycopg2.extensions

from wechat_nontax.receiver.events import AuthorizationEvent

CONNECT_TIMEOUT_S = 2  # libpq's smallest useful value


class EventRecorder:
    """Records events on one connection per thread (the service's worker threads), reopened
    after any failure."""

    def __init__(self, dsn: str, *, statement_timeout_ms: int = 1000) -> None:
        self._dsn = dsn
        self._statement_timeout_ms = statement_timeout_ms
        self._local = threading.local()

    def _connection(self) -> psycopg2.extensions.connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg2.connect(
                self._dsn,
                application_name="nontax-receiver",
                connect_timeout=CONNECT_TIMEOUT_S,
                options=f"-c statement_timeout={self._statement_timeout_ms}",
            )
            conn.autocommit = True  # the SQL function is one transaction of its own
            self._local.conn = conn
        return conn

    def record(self, event: AuthorizationEvent) -> str:
        """What recording the event did (the function's answer); raises psycopg2.Error when the
        database did not take it (the caller spools it)."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT nontax.record_authorization_event(%s, %s, %s, %s, %s, %s, %s)",
                    (
                        event.order_id,
                        event.authorized,
                        event.appid,
                        event.openid,
                        event.to_user,
                        event.source,
                        event.create_time,
                    ),
                )
                return cur.fetchone()[0]
        except psycopg2.Error:
            conn.close()
            raise

    def reachable(self) -> bool:
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except psycopg2.Error:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
            return False
