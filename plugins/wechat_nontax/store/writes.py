"""Write-backs: each result written the moment it is known, one order at a time, with its row
in the append-only history (`store.history`), in the same statement where it can be one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wechat_nontax.observability import metrics
from wechat_nontax.store.history import append_history, history_row, insert_history
from wechat_nontax.store.holds import UNHOLD, held_guard
from wechat_nontax.store.sql import REFUSAL_BLOCKS, SETTLED_SQL, sql_list
from wechat_nontax.wechat.statuses import Status

if TYPE_CHECKING:
    from wechat_nontax.store.holders import Hold


# The inserted code is written over any state but one that knows the bill already: inserted
# (or from an older row version: mismatched), or inserted and then voided (cancelled).
_BILL_KNOWN_GUARD = (
    f"status NOT IN {sql_list((Status.INSERTED, Status.MISMATCHED, Status.CANCELLED))}"
)

# A write sent again after its connection was lost changes nothing if the first one committed
# (the row carries its id): many write-backs leave their guard true, and would count twice.
_NOT_THIS_WRITE = "last_write_id IS DISTINCT FROM %(write_id)s"


@dataclass(frozen=True, slots=True)
class Upload:
    """A PDF uploaded for an order whose media id is not written yet: it is written in the same
    statement as the insert's result (`record_inserted`), guarded by the hold of the try that
    uploaded it. A media id lost in a crash only costs a new upload."""

    media_id: str
    hold: Hold
    duration_ms: int | None = None


class WriteBacks:
    """The order store's write-backs: each result of a call with its history row."""

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
        guard = held_guard("holder", "version") if hold is not None else _BILL_KNOWN_GUARD
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
                + insert_history(f"SELECT order_id, %(run_id)s, {row} FROM changed"),
                {**params, **history},
            )
        # The upload's part is evaluated against the row as it was (SET sees the old row); the
        # media id is unique to its upload, so finding it in the new row says it was written.
        uploaded = held_guard("up_holder", "up_version")
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
            + insert_history(
                "SELECT order_id, %(run_id)s, h.step, h.outcome, h.errcode, h.errmsg, "
                "h.duration_ms FROM changed, (VALUES "
                "(1, 'upload', 'uploaded', NULL::integer, NULL::text, %(up_ms)s::integer), "
                f"(2, {row})) h (n, step, outcome, errcode, errmsg, duration_ms) "
                "WHERE h.n = 2 OR changed.uploaded ORDER BY h.n"
            ),
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
            metrics.bill_inserted(Status.INSERTED)
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
            metrics.bill_inserted(Status.MISMATCHED)
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
        written = self._record(
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
        if written:
            metrics.order_ended(status, errcode)
        return written

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
            errmsg=reason, counts_attempt=False, also=REFUSAL_BLOCKS.format(table="bill_order"),
        )  # fmt: skip

    def reset(self, order_id: str, *, note: str = "reset by operator") -> bool:
        """Make an order due again after a person fixed its data (never a finished one, nor
        one waiting for its payer: only the payer's authorisation makes that due, nor one a
        task try holds right now: it may be sending it). The authorisation wait starts afresh;
        a run that only claimed it reads the new version when its batch holds it."""
        with self._lock, self._conn, self._conn.cursor() as cur:
            cur.execute(
                f"""
                UPDATE nontax.bill_order
                   SET status = 'authorized', reason = NULL, not_before = NULL,
                       s_pdf_media_id = NULL, pdf_uploaded_at = NULL, auth_wait_since = NULL,
                       row_version = row_version + 1, {UNHOLD}, updated_at = now()
                 WHERE order_id = %s AND status NOT IN {SETTLED_SQL}
                   AND status <> '{Status.UNAUTHORIZED.value}'
                   AND (held_by IS NULL OR claim_expires_at < now())
                RETURNING 1
                """,
                (order_id,),
            )
            if not cur.fetchone():
                return False
            append_history(cur, [history_row(order_id, "reset", "authorized", errmsg=note)])
        return True

    def record_operator_action(
        self, order_id: str, *, outcome: str, note: str, run_id: str | None = None
    ) -> bool:
        """A person's action on the order (from the Bills view), in its history; False if
        there is no such order."""
        rows = self._run(
            insert_history(
                "SELECT order_id, %s, 'operator', %s, NULL::integer, %s, NULL::integer "
                "FROM nontax.bill_order WHERE order_id = %s RETURNING 1"
            ),
            (run_id, outcome, note, order_id),
        )
        return bool(rows)
