"""The access token, cached once in the order database for every worker and run.

Why in Postgres: WeChat keeps one valid token per account, and processes that each refresh on
their own overwrite each other's tokens (the 40001 storms of the public SDKs). Here a refresh
happens under a row lock, with a second look at the expiry once the lock is held, so however many
workers find the token stale at once, one of them fetches and the others read its result. Times
are the database's clock, the one clock every worker shares.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg2.extensions

# Fetches a new token: (access_token, expires_in seconds). `stale` is the token that just
# failed (if any), so that a source can ask for a forced refresh when it hands the same back.
Fetch = Callable[[str | None], tuple[str, int]]


@dataclass(frozen=True, slots=True)
class CachedToken:
    token: str
    expires_at: datetime


class TokenCache:
    """One (appid, source) token, shared through the `nontax.access_token` row."""

    def __init__(
        self,
        connect: Callable[[], psycopg2.extensions.connection],
        *,
        appid: str,
        source: str,
        margin_s: int = 300,
    ):
        self._connect = connect
        self._conn: psycopg2.extensions.connection | None = None
        self._appid = appid
        self._source = source
        self._margin = timedelta(seconds=margin_s)
        self._memo: CachedToken | None = None
        self._lock = threading.Lock()  # one refresh per process; the row lock does the rest

    def _db(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def get(self, fetch: Fetch) -> str:
        """A token valid for at least the margin: from memory, the shared row, or `fetch`."""
        memo = self._memo
        if memo is not None and self._fresh(memo, _utcnow()):
            return memo.token
        with self._lock:
            self._memo = self._refresh_if_stale(fetch, stale=None)
            return self._memo.token

    def invalidate(self, failed_token: str, fetch: Fetch) -> str:
        """WeChat refused `failed_token`: drop it if it is still the cached one, then return a
        token to retry with (another worker may already have replaced it)."""
        with self._lock:
            conn = self._db()
            with conn, conn.cursor() as cur:
                cur.execute(
                    "UPDATE nontax.access_token SET expires_at = now() "
                    "WHERE appid = %s AND source = %s AND token = %s",
                    (self._appid, self._source, failed_token),
                )
            self._memo = self._refresh_if_stale(fetch, stale=failed_token)
            return self._memo.token

    def _fresh(self, cached: CachedToken, now: datetime) -> bool:
        return cached.expires_at - self._margin > now

    def _refresh_if_stale(self, fetch: Fetch, *, stale: str | None) -> CachedToken:
        conn = self._db()
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO nontax.access_token (appid, source) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING",
                (self._appid, self._source),
            )
            # The lock is held until this transaction ends: one fetch at a time, everywhere.
            cur.execute(
                "SELECT token, expires_at, now() FROM nontax.access_token "
                "WHERE appid = %s AND source = %s FOR UPDATE",
                (self._appid, self._source),
            )
            token, expires_at, now = cur.fetchone()
            if token and expires_at and expires_at - self._margin > now and token != stale:
                return CachedToken(token, expires_at)  # the second look: someone refreshed
            token, expires_in = fetch(stale)
            cur.execute(
                "UPDATE nontax.access_token SET token = %s, "
                "expires_at = now() + make_interval(secs => %s), fetched_at = now(), "
                "fetch_count = fetch_count + 1 WHERE appid = %s AND source = %s "
                "RETURNING expires_at",
                (token, expires_in, self._appid, self._source),
            )
            return CachedToken(token, cur.fetchone()[0])


def _utcnow() -> datetime:
    return datetime.now(UTC)
