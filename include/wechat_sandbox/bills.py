"""The bills: insertbill (the body's shape, the card, the daily insert limit, the payer's
authorisation, the media, duplicates), rejectinsert (a payer's order refused for good), and a
bill card's reimbursement status (platform/updatestatus, or the admin API as another party).

A part of `SandboxState` (state.py), which holds the lock, the clock and the settings, and
counts each order's inserts (`_order_stats`)."""

from __future__ import annotations

import string
from collections import Counter
from typing import Any

from wechat_sandbox import errors as E
from wechat_sandbox.authorizations import REJECTED, UNAUTHORIZED
from wechat_sandbox.tokens import Token

# A bill card's reimbursement status (platform/updatestatus). Every bill starts INIT; from INIT
# or LOCK any of the four may be set (the same one again included); CANCEL (red-reversed) and
# CLOSURE (written off) are final: any update of a cancelled bill answers 72060, of a closed one
# 72061. Only those two rules are WeChat's as the facts give them; the rest is the sandbox's.
REIMBURSE_INIT = "INVOICE_REIMBURSE_INIT"
REIMBURSE_LOCK = "INVOICE_REIMBURSE_LOCK"
REIMBURSE_CLOSURE = "INVOICE_REIMBURSE_CLOSURE"
REIMBURSE_CANCEL = "INVOICE_REIMBURSE_CANCEL"
REIMBURSE_STATUSES = (REIMBURSE_INIT, REIMBURSE_LOCK, REIMBURSE_CLOSURE, REIMBURSE_CANCEL)
_FINAL_REIMBURSE = {REIMBURSE_CANCEL: E.CARD_CANCELLED, REIMBURSE_CLOSURE: E.CARD_CLOSED}

# The longest rejectinsert reason accepted (47001 beyond it). WeChat documents no limit; this
# is the pipeline's assumed one (wechat_nontax.wechat.validation.MAX_REFUSAL_REASON_CHARS), so
# that a client that skipped its own check is caught here too.
MAX_REJECT_REASON_CHARS = 100
# Daily quotas count per Beijing calendar day (UTC+8), like the package's quota reset.
_UTC8_OFFSET_S = 8 * 3600

_OPENID_ALPHABET = string.ascii_letters + string.digits + "_-"


def parse_insert_body(obj: Any) -> dict[str, Any] | None:
    """The insertbill body in the example's shape, or None (47001) if anything is off.

    Shape: {order_id, card_id, appid, card_ext: {user_card: {invoice_user_data: {fee: int,
    title: str, billing_time: int, billing_no: str, billing_code: str, s_pdf_media_id: str}}}}.
    Integers must be JSON integers (not strings, not booleans); strings must be non-empty.
    """
    if not isinstance(obj, dict):
        return None
    order_id, card_id, appid = obj.get("order_id"), obj.get("card_id"), obj.get("appid")
    card_ext = obj.get("card_ext")
    if not (all(map(E.is_text, (order_id, card_id, appid))) and isinstance(card_ext, dict)):
        return None
    user_card = card_ext.get("user_card")
    if not isinstance(user_card, dict):
        return None
    data = user_card.get("invoice_user_data")
    if not isinstance(data, dict):
        return None
    fee, billing_time = data.get("fee"), data.get("billing_time")
    if type(fee) is not int or fee < 0 or type(billing_time) is not int or billing_time <= 0:
        return None
    title, billing_no = data.get("title"), data.get("billing_no")
    billing_code, media_id = data.get("billing_code"), data.get("s_pdf_media_id")
    if not all(map(E.is_text, (title, billing_no, billing_code, media_id))):
        return None
    return {
        "order_id": order_id,
        "card_id": card_id,
        "appid": appid,
        "fee": fee,
        "title": title,
        "billing_time": billing_time,
        "billing_no": billing_no,
        "billing_code": billing_code,
        "s_pdf_media_id": media_id,
    }


class BillBook:
    """The bills, refusals and card statuses of `SandboxState`."""

    def _clear_bills(self) -> None:
        self.bills: dict[str, dict[str, Any]] = {}  # order_id -> bill, in insertion order
        self._billing_pairs: dict[tuple[str, str], str] = {}  # (no, code) -> order_id
        self.rejections: dict[str, dict[str, Any]] = {}  # order_id -> the rejectinsert
        self.card_status: dict[str, dict[str, Any]] = {}  # order_id -> reimburse status, history
        self._code_owner: dict[str, str] = {}  # bill code -> order_id
        self._inserts_per_day: Counter[tuple[int, str]] = Counter()  # (UTC+8 day, appid)

    def insert_bill(self, token: Token, body: Any) -> dict[str, Any]:
        """POST /nontax/insertbill once the token is known to be valid."""
        bill = parse_insert_body(body)
        if bill is None:
            return E.error(E.DATA_FORMAT)
        with self._lock:
            if bill["appid"] != token.appid:
                return E.error(E.INVALID_APPID)
            if bill["card_id"] not in self.settings.card_ids:
                return E.error(E.INVALID_CARD)
            day_key = (self._beijing_day(), token.appid)
            limit = self.settings.daily_insert_limit
            if limit is not None and self._inserts_per_day[day_key] >= limit:
                return E.error(E.TODAY_INSERT_LIMIT)
            order_id = bill["order_id"]
            status = self.authorization_status(order_id)
            if status == UNAUTHORIZED:
                return E.error(E.ORDER_NOT_AUTHORISED)
            if status == REJECTED:
                return E.error(E.BUSINESS_REJECTED)
            if self._usable_media(bill["s_pdf_media_id"], token.appid) is None:
                return E.error(E.INVALID_MEDIA_ID)
            if order_id in self.bills:
                return E.error(E.ORDER_ID_REPEATED)
            pair = (bill["billing_no"], bill["billing_code"])
            owner = self._billing_pairs.get(pair)
            if owner is not None and owner != order_id:
                return E.error(E.BILLING_REPEATED)
            code = str(self._rng.randint(10**12, 10**13 - 1))
            openid = "o" + "".join(self._rng.choices(_OPENID_ALPHABET, k=27))
            bill.update(code=code, openid=openid, inserted_at=self.clock())
            self.bills[order_id] = bill
            self._billing_pairs[pair] = order_id
            self._code_owner[code] = order_id
            self._inserts_per_day[day_key] += 1
            self.card_status[order_id] = {
                "order_id": order_id,
                "card_id": bill["card_id"],
                "code": code,
                "reimburse_status": REIMBURSE_INIT,
                "updated_at": bill["inserted_at"],
                "history": [],
            }
            self._order_stats(order_id).successes += 1
            return E.ok(code=code, openid=openid)

    def reject_insert(self, token: Token, body: Any) -> dict[str, Any]:
        """POST /card/invoice/rejectinsert once the token is known to be valid.

        47001 for a malformed body (s_pappid, order_id, reason non-empty text, reason at most
        MAX_REJECT_REASON_CHARS, url text if present); 72035 once the order is refused (a
        repeat too); 72056 when the order already has a bill; 72038 when it was never
        authorised. Else the refusal is recorded and insertbill answers 72035 for good.
        """
        if not isinstance(body, dict):
            return E.error(E.DATA_FORMAT)
        order_id, s_pappid, reason = body.get("order_id"), body.get("s_pappid"), body.get("reason")
        url = body.get("url")
        if not (E.is_text(order_id) and E.is_text(s_pappid) and E.is_text(reason)):
            return E.error(E.DATA_FORMAT)
        if len(reason) > MAX_REJECT_REASON_CHARS or not (url is None or isinstance(url, str)):
            return E.error(E.DATA_FORMAT)
        with self._lock:
            earlier = self.rejections.get(order_id)
            if earlier is not None:
                earlier["repeats"] += 1
                return E.error(E.BUSINESS_REJECTED)
            if order_id in self.bills:
                return E.error(E.ORDER_ID_REPEATED)
            status = self.authorization_status(order_id)
            if status == UNAUTHORIZED:
                return E.error(E.ORDER_NOT_AUTHORISED)
            if status == REJECTED:
                return E.error(E.BUSINESS_REJECTED)
            self.rejections[order_id] = {
                "order_id": order_id,
                "appid": token.appid,
                "s_pappid": s_pappid,
                "reason": reason,
                "url": url or None,
                "rejected_at": self.clock(),
                "repeats": 0,
            }
            return E.ok()

    def update_status(self, token: Token, body: Any) -> dict[str, Any]:
        """POST /card/invoice/platform/updatestatus once the token is known to be valid.

        47001 for a malformed body or an unknown reimburse_status; 40056 when card_id + code
        name no bill of this app; 72060 / 72061 when the bill is cancelled / closed.
        """
        if not isinstance(body, dict):
            return E.error(E.DATA_FORMAT)
        card_id, code = body.get("card_id"), body.get("code")
        wanted = body.get("reimburse_status")
        if not (E.is_text(card_id) and E.is_text(code)) or wanted not in REIMBURSE_STATUSES:
            return E.error(E.DATA_FORMAT)
        with self._lock:
            order_id = self._code_owner.get(code)
            bill = self.bills.get(order_id) if order_id is not None else None
            if bill is None or bill["card_id"] != card_id or bill["appid"] != token.appid:
                return E.error(E.INVALID_CODE)
            return self._set_reimburse_status(order_id, wanted, by="updatestatus")

    def _set_reimburse_status(self, order_id: str, wanted: str, *, by: str) -> dict[str, Any]:
        record = self.card_status[order_id]
        final = _FINAL_REIMBURSE.get(record["reimburse_status"])
        if final is not None:
            return E.error(final)
        now = self.clock()
        record["history"].append(
            {"from": record["reimburse_status"], "to": wanted, "at": now, "by": by}
        )
        record["reimburse_status"], record["updated_at"] = wanted, now
        return E.ok()

    def set_bill_status(self, order_id: str, wanted: str) -> dict[str, Any]:
        """Admin: set a bill's reimbursement status as another party would (a reimbursing unit
        locking or writing it off), by WeChat's rules; the answer updatestatus would give."""
        if wanted not in REIMBURSE_STATUSES:
            raise ValueError(f"reimburse_status must be one of {', '.join(REIMBURSE_STATUSES)}")
        with self._lock:
            if order_id not in self.card_status:
                raise KeyError(order_id)
            return self._set_reimburse_status(order_id, wanted, by="admin")

    def order_for_code(self, code: str) -> str | None:
        with self._lock:
            return self._code_owner.get(code)

    def _beijing_day(self) -> int:
        return int((self.clock() + _UTC8_OFFSET_S) // 86_400)

    def bills_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(bill) for bill in self.bills.values()]

    def bill(self, order_id: str) -> dict[str, Any] | None:
        with self._lock:
            bill = self.bills.get(order_id)
            return None if bill is None else dict(bill)

    def rejections_dict(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {order_id: dict(r) for order_id, r in self.rejections.items()}

    def statuses_dict(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                order_id: {**record, "history": [dict(h) for h in record["history"]]}
                for order_id, record in self.card_status.items()
            }

    def inserts_today(self) -> dict[str, int]:
        """Successful inserts per appid this Beijing calendar day (the daily insert limit)."""
        with self._lock:
            day = self._beijing_day()
            return {appid: n for (d, appid), n in self._inserts_per_day.items() if d == day}
