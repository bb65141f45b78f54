"""The access token and the `wx_card` ticket, each cached once in the order database for every
worker and run.

Both are credentials of the account that WeChat issues for 7200 s and keeps one of valid at a
time, so both go through this one mechanism: a row of `nontax.access_token` each, keyed by
(appid, source): the token's source is its mode (`stable_token`, `token`, `service:<url>`), the
ticket's is `TICKET_SOURCE`. What follows says "token" for either.

Why in Postgres: WeChat keeps one valid token per account, and processes that each refresh on
their own overwrite each other's tokens (the 40001 storms of the public SDKs). Here a refresh
happens under a row lock, with a second look at the expiry once the lock is held, so however many
workers find the token stale at once, one of them fetches and the others read its result. Times
are the database's clock, the one clock every worker shares.

The token is a secret, so the row never holds it in clear: it holds the token encrypted with
Airflow's Fernet key (`[core] fernet_key`, the key that already encrypts Connections, present in
every Airflow process) and its SHA-256, which is what an invalidation compares. No statement
ever carries the token itself: a failing statement is logged by Postgres with its values. A row
that does not decrypt (the key was rotated, the row was tampered with) counts as stale. Without
a Fernet key the cache refuses to work (`NoFernetKeyError`) rather than store a token in clear.

Forced refreshes (stable_token's `force_refresh`, 20 a day and 30 s apart for the whole account)
are decided here too, under the same lock: at most one per `FORCE_WINDOW_S` and
`FORCE_MAX_PER_DAY` a Beijing day, counted on the row for all workers. When WeChat refuses a
token, the token source hands the same one back, and no forced refresh is allowed now, the
caller gets a `WeChatError` of step "token": the batch stops and its orders stay due.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import psycopg2.extensions

from wechat_nontax.observability import metrics
from wechat_nontax.settings import TIMEZONE
from wechat_nontax.store.quotas import QUOTA_STOP_SQL
from wechat_nontax.wechat import errors
from wechat_nontax.wechat.statuses import Action, Step
from wechat_nontax.wechat.timing import seconds_until_quota_reset

# Fetches a token: (access_token, expires_in seconds). The argument asks for a forced refresh
# (stable_token's force_refresh); a source that cannot force ignores it.
Fetch = Callable[[bool], tuple[str, int]]

# WeChat documents ~7200 s. Anything outside this range is clamped: a huge value would keep a
# dead token for ever (and overflow Postgres' interval), a tiny one would refresh at every call.
# The `wx_card` ticket's row (cgi-bin/ticket/getticket?type=wx_card, what getbillauthurl signs).
TICKET_SOURCE = "ticket:wx_card"
MIN_EXPIRES_IN_S = 60
MAX_EXPIRES_IN_S = 7200
# At most one forced refresh per appid in this window (WeChat: 30 s apart), and at most this
# many a Beijing day: half of WeChat's 20, the rest left to the account's other systems.
FORCE_WINDOW_S = 600
FORCE_MAX_PER_DAY = 10


# The day forced refreshes are counted by, as WeChat counts its quotas: Beijing's.
_BEIJING_TODAY = f"(now() AT TIME ZONE '{TIMEZONE}')::date"


class NoFernetKeyError(RuntimeError):
    """Airflow has no Fernet key here: the token would have to be stored in clear."""


class Cipher(Protocol):
    def encrypt(self, data: bytes) -> bytes: ...
    def decrypt(self, token: bytes | str) -> bytes: ...


def airflow_fernet() -> Cipher:
    """The Fernet of Airflow's `[core] fernet_key` (comma-separated keys rotate: the first
    encrypts, all decrypt), read through the Task SDK's configuration as a task reads it."""
    from airflow.sdk.crypto import get_fernet

    try:
        fernet = get_fernet()
    except Exception as exc:  # noqa: BLE001 (AirflowException: a key that is not a Fernet key)
        raise NoFernetKeyError(
            f"Airflow's Fernet key is not usable: {type(exc).__name__}"
        ) from None
    if not fernet.is_encrypted:
        raise NoFernetKeyError(
            "no Fernet key ([core] fernet_key, AIRFLOW__CORE__FERNET_KEY): the access token is "
            "never stored in clear; configure the key Airflow uses to encrypt Connections"
        )
    return fernet


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def clamp_expires_in(value: int) -> int:
    return max(MIN_EXPIRES_IN_S, min(MAX_EXPIRES_IN_S, value))


@dataclass(frozen=True, slots=True)
class CachedToken:
    token: str
    expires_at: datetime

    def __repr__(self) -> str:  # never the token, whoever prints this
        return f"CachedToken(expires_at={self.expires_at.isoformat()})"


class TokenCache:
    """One (appid, source) token, shared through the `nontax.access_token` row.

    `step` names the call that fetches it in errors and quota records ("token", or "ticket" for
    the wx_card ticket). `can_force`: whether the source can be forced to hand out another (the
    ticket cannot: a refused ticket handed back is used as it is, WeChat's current one)."""

    def __init__(
        self,
        connect: Callable[[], psycopg2.extensions.connection],
        *,
        appid: str,
        source: str,
        margin_s: int = 300,
        cipher: Cipher | None = None,
        step: str = Step.TOKEN,
        can_force: bool = True,
    ):
        self._connect = connect
        self._conn: psycopg2.extensions.connection | None = None
        self._appid = appid
        self._source = source
        self._margin = timedelta(seconds=margin_s)
        self._cipher = cipher
        self._step = step
        self._can_force = can_force
        self._memo: CachedToken | None = None
        self._lock = threading.Lock()  # one refresh per process; the row lock does the rest

    def _db(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _fernet(self) -> Cipher:
        if self._cipher is None:
            self._cipher = airflow_fernet()
        return self._cipher

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
        token to retry with (another worker may already have replaced it). Raises a
        `WeChatError` of step "token" when the source keeps handing back the refused token and
        no forced refresh is allowed now."""
        with self._lock:
            conn = self._db()
            with conn, conn.cursor() as cur:
                cur.execute(
                    "UPDATE nontax.access_token SET expires_at = now() "
                    "WHERE appid = %s AND source = %s AND token_sha256 = %s",
                    (self._appid, self._source, token_sha256(failed_token)),
                )
            self._memo = self._refresh_if_stale(fetch, stale=failed_token)
            return self._memo.token

    def _fresh(self, cached: CachedToken, now: datetime) -> bool:
        return cached.expires_at - self._margin > now

    def _decrypt(self, ciphertext: str | None, sha256: str | None) -> str | None:
        """The row's token, or None when there is none or it does not decrypt to its hash."""
        if not ciphertext or not sha256:
            return None
        try:
            token = self._fernet().decrypt(ciphertext.encode()).decode()
        except Exception:  # noqa: BLE001 (InvalidToken: another key, or a damaged row)
            return None
        return token if token_sha256(token) == sha256 else None

    def _refresh_if_stale(self, fetch: Fetch, *, stale: str | None) -> CachedToken:
        fernet = self._fernet()  # before any fetch: no key, no token fetched for nothing
        conn = self._db()
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO nontax.access_token (appid, source) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING",
                (self._appid, self._source),
            )
            # The lock is held until this transaction ends: one fetch at a time, everywhere.
            cur.execute(
                "SELECT token_ciphertext, token_sha256, expires_at, now() FROM nontax.access_token "
                "WHERE appid = %s AND source = %s FOR UPDATE",
                (self._appid, self._source),
            )
            ciphertext, sha256, expires_at, now = cur.fetchone()
            token = self._decrypt(ciphertext, sha256)
            if token and expires_at and expires_at - self._margin > now and token != stale:
                return CachedToken(token, expires_at)  # the second look: someone refreshed
            self._refuse_past_daily_quota(cur)
            token, expires_in = self._fetch(conn, cur, fetch, False)
            forced = False
            if stale is not None and token == stale and self._can_force:
                # The source hands back the token WeChat just refused (stable_token does while
                # it thinks it valid): only a forced refresh gives another, and they are few.
                self._claim_forced_refresh(cur)
                token, expires_in = self._fetch(conn, cur, fetch, True)
                forced = True
            cur.execute(
                "UPDATE nontax.access_token SET token_ciphertext = %s, token_sha256 = %s, "
                "expires_at = now() + make_interval(secs => %s), fetched_at = now(), "
                "fetch_count = fetch_count + 1 WHERE appid = %s AND source = %s "
                "RETURNING expires_at",
                (
                    fernet.encrypt(token.encode()).decode(),
                    token_sha256(token),
                    clamp_expires_in(expires_in),
                    self._appid,
                    self._source,
                ),
            )
            cached = CachedToken(token, cur.fetchone()[0])
        metrics.token_refreshed(forced=forced)
        if forced and token == stale:  # raised once the forced refresh is counted, committed
            raise errors.error_for(
                40001, "a forced refresh handed back the refused token", step=self._step
            )
        return cached

    def _fetch(
        self,
        conn: psycopg2.extensions.connection,
        cur: psycopg2.extensions.cursor,
        fetch: Fetch,
        force: bool,
    ) -> tuple[str, int]:
        """`fetch`; a daily quota answer is recorded for every worker before the row lock is
        released, so that the next one in line does not call the endpoint to learn it again."""
        try:
            return fetch(force)
        except errors.WeChatError as exc:
            if exc.action is Action.STOP_QUOTA:
                cur.execute(
                    QUOTA_STOP_SQL,
                    {
                        "appid": self._appid, "api": self._step, "errcode": exc.errcode,
                        "errmsg": exc.errmsg, "run_id": None,
                        "seconds": seconds_until_quota_reset(time.time()),
                    },
                )  # fmt: skip
                conn.commit()
                metrics.quota_stopped(Step.TOKEN)
            raise

    def _refuse_past_daily_quota(self, cur: psycopg2.extensions.cursor) -> None:
        """Raise a step-"token" 45009 without a fetch while the token endpoint's daily quota is
        recorded as used up (`nontax.api_quota`, written by the batch that got the answer)."""
        cur.execute(
            "SELECT stopped_until, errcode FROM nontax.api_quota "
            "WHERE appid = %s AND api = %s AND stopped_until > now()",
            (self._appid, self._step),
        )
        row = cur.fetchone()
        if row is not None:
            raise errors.error_for(
                45009,
                f"the {self._step} endpoint's daily quota is used up (errcode {row[1]}, "
                f"recorded): no fetch before {row[0].isoformat(timespec='minutes')}",
                step=self._step,
            )

    def _claim_forced_refresh(self, cur: psycopg2.extensions.cursor) -> None:
        """Count a forced refresh on the (locked) row, or raise a step-"token" error when the
        window or the day's allowance is used up."""
        cur.execute(
            "UPDATE nontax.access_token SET "
            f"forced_count_day = CASE WHEN forced_day = {_BEIJING_TODAY} "
            "  THEN forced_count_day + 1 ELSE 1 END, "
            f"forced_day = {_BEIJING_TODAY}, forced_at = now() "
            "WHERE appid = %s AND source = %s "
            "AND (forced_at IS NULL OR forced_at < now() - make_interval(secs => %s)) "
            f"AND (forced_day IS DISTINCT FROM {_BEIJING_TODAY} "
            "  OR forced_count_day < %s) "
            "RETURNING forced_count_day",
            (self._appid, self._source, FORCE_WINDOW_S, FORCE_MAX_PER_DAY),
        )
        if cur.fetchone() is not None:
            return
        cur.execute(
            "SELECT forced_at, forced_count_day FROM nontax.access_token "
            "WHERE appid = %s AND source = %s",
            (self._appid, self._source),
        )
        forced_at, count = cur.fetchone()
        raise errors.error_for(
            40001,
            "the refused token is handed back again and no forced refresh is allowed now "
            f"(last {forced_at.isoformat(timespec='seconds')}, {count} today; at most one per "
            f"{FORCE_WINDOW_S} s, {FORCE_MAX_PER_DAY} a day)",
            step=self._step,
        )


def _utcnow() -> datetime:
    return datetime.now(UTC)
