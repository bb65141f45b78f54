"""The orders' authorisation links in the order store: which orders want one, and the link made
recorded on its order (`auth_url`, `auth_url_expires_at`, a history row of step `auth_link`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from wechat_nontax.store.history import insert_history
from wechat_nontax.wechat.statuses import Status

_TARGET_COLUMNS = "order_id, status, fee, row_version, auth_url, auth_url_expires_at, now()"

# The link is recorded on the row version it was asked for, while the order still waits for
# its payer; the same link recorded again (a write sent twice) changes nothing.
_LINK_HISTORY = insert_history(
    "SELECT order_id, NULL, 'auth_link', 'made', NULL, 'valid until ' || "
    "to_char(auth_url_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI\"Z\"'), NULL FROM linked"
)
_RECORD_LINK_SQL = f"""
    WITH linked AS (
        UPDATE nontax.bill_order
           SET auth_url = %(auth_url)s,
               auth_url_expires_at = now() + make_interval(secs => %(expires_in_s)s),
               updated_at = now()
         WHERE order_id = %(order_id)s AND row_version = %(row_version)s
           AND status = '{Status.UNAUTHORIZED.value}'
           AND auth_url IS DISTINCT FROM %(auth_url)s
        RETURNING order_id, auth_url_expires_at
    )
    {_LINK_HISTORY}
    RETURNING order_id
"""


@dataclass(frozen=True, slots=True)
class LinkTarget:
    """An order as a link is made for it, read with the database's clock (`now`)."""

    order_id: str
    status: str
    fee: int
    row_version: int
    auth_url: str | None
    auth_url_expires_at: datetime | None
    now: datetime


class AuthLinkRecords:
    """The order store's part for authorisation links."""

    def link_targets(self, order_ids: Sequence[str]) -> list[LinkTarget]:
        """The orders of `order_ids` that exist, in that order."""
        rows = self._run(
            f"SELECT {_TARGET_COLUMNS} FROM nontax.bill_order WHERE order_id = ANY(%s)",
            (list(order_ids),),
        )
        by_id = {row[0]: LinkTarget(*row) for row in rows}
        return [by_id[order_id] for order_id in order_ids if order_id in by_id]

    def unauthorized_needing_link(self, *, limit: int, margin_s: float) -> list[str]:
        """Up to `limit` orders waiting for their payer whose link is missing or expires
        within `margin_s`, oldest first (the partial index of migration 0012)."""
        rows = self._run(
            f"SELECT order_id FROM nontax.bill_order WHERE status = '{Status.UNAUTHORIZED.value}' "
            "AND (auth_url_expires_at IS NULL "
            "     OR auth_url_expires_at < now() + make_interval(secs => %s)) "
            "ORDER BY created_at, order_id LIMIT %s",
            (margin_s, limit),
        )
        return [order_id for (order_id,) in rows]

    def waiting_for_payer(self) -> tuple[int, int, datetime | None]:
        """(orders waiting for their payer, of them without a valid link, the oldest's load)."""
        [(waiting, unlinked, oldest)] = self._run(
            "SELECT count(*), count(*) FILTER (WHERE auth_url_expires_at IS NULL "
            "OR auth_url_expires_at <= now()), min(created_at) FROM nontax.bill_order "
            f"WHERE status = '{Status.UNAUTHORIZED.value}'"
        )
        return int(waiting), int(unlinked), oldest

    def record_link(
        self, order_id: str, *, row_version: int, auth_url: str, expires_in_s: int
    ) -> bool:
        """Record a link made for `order_id` at `row_version`; False when the order changed
        meanwhile (reloaded, authorised, declined): the link is then not kept."""
        params = {"order_id": order_id, "row_version": row_version, "auth_url": auth_url,
                  "expires_in_s": expires_in_s}  # fmt: skip
        return bool(self._run(_RECORD_LINK_SQL, params))
