"""The sandbox's in-memory state and the WeChat logic, free of HTTP.

Every public method takes the lock and does not await, so the state stays consistent whether it
is used from the event loop (one worker, the normal case) or from threads. Methods that answer a
WeChat call return the JSON payload as a dict.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import secrets
import string
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from wechat_sandbox import errors as E
from wechat_sandbox.config import Settings

ENDPOINTS = (
    "stable_token",
    "token",
    "setpdf",
    "getpdf",
    "insertbill",
    "getauthdata",
    "rejectinsert",
    "updatestatus",
    "getticket",
    "getbillauthurl",
)

# How many calls the call log keeps (a chaos run makes a few hundred).
CALL_LOG_MAX = 100_000

AUTHORIZED = "authorized"
UNAUTHORIZED = "unauthorized"  # never authorised (yet)
REJECTED = "rejected"
# The admin API's authorisation statuses and what getauthdata answers for each.
AUTH_STATUSES = {
    AUTHORIZED: "auth success",
    UNAUTHORIZED: "never auth",
    REJECTED: "reject insert",
}

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
# is the pipeline's assumed one (wechat_nontax.issuing.validation.MAX_REFUSAL_REASON_CHARS), so
# that a client that skipped its own check is caught here too.
MAX_REJECT_REASON_CHARS = 100
# Daily quotas count per Beijing calendar day (UTC+8), like the package's quota reset.
_UTC8_OFFSET_S = 8 * 3600

_OPENID_ALPHABET = string.ascii_letters + string.digits + "_-"
_MEDIA_ID_LOW = 10**18  # 19 digits, like real s_media_id values, below 2**63
_MEDIA_ID_HIGH = 2**63 - 1


@dataclass(slots=True)
class Token:
    token: str
    kind: str  # "stable" | "classic"
    appid: str
    issued_at: float
    expires_at: float
    revoked_at: float | None = None  # from then on the token answers 40001 (superseded)

    def to_dict(self, now: float) -> dict[str, Any]:
        # Never the token itself: its hash identifies it (the admin API is not a token source).
        return {
            "sha256": hashlib.sha256(self.token.encode()).hexdigest(),
            "kind": self.kind,
            "appid": self.appid,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "valid": self.errcode(now) == E.OK,
        }

    def errcode(self, now: float) -> int:
        if now >= self.expires_at:
            return E.TOKEN_EXPIRED
        if self.revoked_at is not None and now >= self.revoked_at:
            return E.INVALID_CREDENTIAL
        return E.OK


@dataclass(slots=True)
class Media:
    media_id: str
    appid: str
    filename: str | None
    data: bytes
    sha256: str
    uploaded_at: float
    expires_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "s_media_id": self.media_id,
            "appid": self.appid,
            "filename": self.filename,
            "size": len(self.data),
            "sha256": self.sha256,
            "uploaded_at": self.uploaded_at,
            "expires_at": self.expires_at,
        }


@dataclass(slots=True)
class OrderStats:
    """What happened to insertbill calls naming one order_id (fault-injected answers included)."""

    attempts: int = 0
    successes: int = 0
    repeats: int = 0  # answers 72056
    last_errcode: int | None = None
    errcodes: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "successes": self.successes,
            "repeats": self.repeats,
            "last_errcode": self.last_errcode,
            "errcodes": {str(k): v for k, v in self.errcodes.items()},
        }


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
    if not (_text(order_id) and _text(card_id) and _text(appid) and isinstance(card_ext, dict)):
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
    if not (_text(title) and _text(billing_no) and _text(billing_code) and _text(media_id)):
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


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


class SandboxState:
    """Apps, tokens, media, bills, authorisations and counters of one sandbox."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._initial = settings.copy()
        self.settings = settings.copy()
        self.clock = clock
        self._lock = threading.RLock()
        self._rng = random.Random()
        self.started_at = clock()
        self._clear()

    def _clear(self) -> None:
        self.calls: Counter[str] = Counter({name: 0 for name in ENDPOINTS})
        self.tokens: dict[str, Token] = {}
        self._stable: dict[str, Token] = {}  # appid -> current stable token
        self._classic: dict[str, Token] = {}  # appid -> latest classic token
        self.media: dict[str, Media] = {}
        self.bills: dict[str, dict[str, Any]] = {}  # order_id -> bill, in insertion order
        self._billing_pairs: dict[tuple[str, str], str] = {}  # (no, code) -> order_id
        self.orders: dict[str, OrderStats] = {}
        self.authorizations: dict[str, dict[str, Any]] = {}  # explicit ones only
        self._implicit_auth_time: dict[str, int] = {}
        self.rejections: dict[str, dict[str, Any]] = {}  # order_id -> the rejectinsert
        self.card_status: dict[str, dict[str, Any]] = {}  # order_id -> reimburse status, history
        self._code_owner: dict[str, str] = {}  # bill code -> order_id
        self._inserts_per_day: Counter[tuple[int, str]] = Counter()  # (UTC+8 day, appid)
        # order_id -> endpoint -> answers (errcode, "http_error" for none), faults included.
        self.order_answers: dict[str, dict[str, Counter]] = {}
        self.lost_answers = 0
        self.faulted_calls = 0
        # Every call in arrival order: when it arrived, the endpoint, the order it named, and
        # its answer (errcode; getauthdata's invoice_status): what a test or the chaos runner
        # needs to prove that no call came after a point in time (a recorded quota stop, a
        # "never auth"). Bounded: the oldest go first.
        self.call_log: deque[dict[str, Any]] = deque(maxlen=CALL_LOG_MAX)

    # ----------------------------------------------------------------- admin
    def reset(self) -> None:
        """Back to the state at start: settings too; no tokens, media, bills, counters."""
        with self._lock:
            self.settings = self._initial.copy()
            self._clear()

    def configure(self, updates: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.settings.update(updates)
            return self.settings.to_dict()

    def count_call(self, endpoint: str) -> None:
        with self._lock:
            self.calls[endpoint] += 1

    def expire_tokens(self) -> int:
        """Expire every token now (they answer 42001); returns how many were still valid."""
        with self._lock:
            return _expire_now(self.tokens.values(), self.clock())

    def expire_media(self) -> int:
        with self._lock:
            return _expire_now(self.media.values(), self.clock())

    def set_authorization(self, order_id: str, status: str) -> dict[str, Any]:
        if status not in AUTH_STATUSES:
            raise ValueError(f"status must be one of {', '.join(AUTH_STATUSES)}")
        with self._lock:
            record = {"order_id": order_id, "status": status, "auth_time": int(self.clock())}
            self.authorizations[order_id] = record
            return dict(record)

    def clear_authorization(self, order_id: str) -> bool:
        with self._lock:
            return self.authorizations.pop(order_id, None) is not None

    def authorization_status(self, order_id: str) -> str:
        if order_id in self.rejections:
            return REJECTED  # refused by rejectinsert: for good, whatever the admin set later
        record = self.authorizations.get(order_id)
        if record is not None:
            return record["status"]
        return AUTHORIZED if self.settings.authorize_by_default else UNAUTHORIZED

    # ---------------------------------------------------------------- tokens
    def _new_token(self, kind: str, appid: str, now: float) -> Token:
        token = Token(
            token=secrets.token_urlsafe(102),
            kind=kind,
            appid=appid,
            issued_at=now,
            expires_at=now + self.settings.token_ttl_s,
        )
        self.tokens[token.token] = token
        if self.settings.tokens_file:
            _append_private(self.settings.tokens_file, token.token + "\n")
        return token

    def _check_app(self, grant_type: Any, appid: Any, secret: Any) -> dict[str, Any] | None:
        if grant_type != "client_credential":
            return E.error(E.INVALID_GRANT_TYPE)
        if not isinstance(appid, str) or not appid:
            return E.error(E.APPID_MISSING)
        if appid not in self.settings.apps:
            return E.error(E.INVALID_APPID)
        if not isinstance(secret, str) or not secret:
            return E.error(E.SECRET_MISSING)
        if not secrets.compare_digest(secret.encode(), self.settings.apps[appid].encode()):
            return E.error(E.INVALID_APPSECRET)
        return None

    def stable_token(self, body: Any) -> dict[str, Any]:
        """POST /cgi-bin/stable_token: the same token while valid; force_refresh replaces it."""
        if not isinstance(body, dict):
            return E.error(E.DATA_FORMAT)
        force = body.get("force_refresh", False)
        if force is None:
            force = False
        if not isinstance(force, bool):
            return E.error(E.DATA_FORMAT)
        with self._lock:
            problem = self._check_app(body.get("grant_type"), body.get("appid"), body.get("secret"))
            if problem is not None:
                return problem
            appid = body["appid"]
            now = self.clock()
            current = self._stable.get(appid)
            if current is not None and not force and current.errcode(now) == E.OK:
                remaining = current.expires_at - now
                renew = self.settings.stable_renew_s
                # Renewed shortly before expiry (old and new both valid until the old expires);
                # a window as long as the TTL itself would mean a new token on every call.
                if not (renew < self.settings.token_ttl_s and remaining <= renew):
                    return {"access_token": current.token, "expires_in": _expires_in(remaining)}
            if force:
                for tok in self.tokens.values():
                    if tok.kind == "stable" and tok.appid == appid and tok.revoked_at is None:
                        tok.revoked_at = now
            token = self._new_token("stable", appid, now)
            self._stable[appid] = token
            return {"access_token": token.token, "expires_in": _expires_in(token.expires_at - now)}

    def classic_token(self, grant_type: Any, appid: Any, secret: Any) -> dict[str, Any]:
        """GET /cgi-bin/token: a new token per call; the previous one lives for the overlap."""
        with self._lock:
            problem = self._check_app(grant_type, appid, secret)
            if problem is not None:
                return problem
            now = self.clock()
            previous = self._classic.get(appid)
            if previous is not None:
                cutoff = now + self.settings.classic_overlap_s
                if previous.revoked_at is None or previous.revoked_at > cutoff:
                    previous.revoked_at = cutoff
            token = self._new_token("classic", appid, now)
            self._classic[appid] = token
            return {"access_token": token.token, "expires_in": _expires_in(token.expires_at - now)}

    def check_token(self, access_token: str | None) -> tuple[Token | None, dict[str, Any] | None]:
        """(token, None) when usable, else (None, error answer 41001/40001/42001)."""
        if not access_token:
            return None, E.error(E.TOKEN_MISSING)
        with self._lock:
            token = self.tokens.get(access_token)
            if token is None:
                return None, E.error(E.INVALID_CREDENTIAL)
            code = token.errcode(self.clock())
            if code != E.OK:
                return None, E.error(code)
            return token, None

    # ----------------------------------------------------------------- media
    def upload_pdf(self, token: Token, data: bytes, filename: str | None) -> dict[str, Any]:
        """setpdf after the multipart checks: 72040 unless it looks like a PDF."""
        limit = self.settings.max_pdf_bytes
        if not data.startswith(b"%PDF-") or (limit is not None and len(data) > limit):
            return E.error(E.INVALID_PDF)
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            now = self.clock()
            media_id = str(self._rng.randint(_MEDIA_ID_LOW, _MEDIA_ID_HIGH))
            while media_id in self.media:
                media_id = str(self._rng.randint(_MEDIA_ID_LOW, _MEDIA_ID_HIGH))
            self.media[media_id] = Media(
                media_id=media_id,
                appid=token.appid,
                filename=filename,
                data=data,
                sha256=digest,
                uploaded_at=now,
                expires_at=now + self.settings.media_ttl_s,
            )
            return E.ok(s_media_id=media_id)

    def _usable_media(self, media_id: Any, appid: str) -> Media | None:
        media = self.media.get(media_id) if isinstance(media_id, str) else None
        if media is None or media.appid != appid or self.clock() >= media.expires_at:
            return None
        return media

    def get_pdf(self, token: Token, body: Any, base_url: str) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("action") != "get_url":
            return E.error(E.DATA_FORMAT)
        with self._lock:
            media = self._usable_media(body.get("s_media_id"), token.appid)
            if media is None:
                return E.error(E.INVALID_MEDIA_ID)
            url = f"{base_url.rstrip('/')}/_sandbox/media/{media.media_id}/pdf"
            return E.ok(pdf_url=url, pdf_url_expire_time=7200)

    def media_pdf(self, media_id: str) -> bytes | None:
        with self._lock:
            media = self.media.get(media_id)
            return None if media is None else media.data

    # ----------------------------------------------------------------- bills
    def note_insert_attempt(self, order_id: str) -> None:
        with self._lock:
            stats = self.orders.get(order_id)
            if stats is None:
                stats = self.orders[order_id] = OrderStats()
            stats.attempts += 1

    def note_insert_answer(self, order_id: str, errcode: int | None) -> None:
        with self._lock:
            stats = self.orders.get(order_id)
            if stats is None:
                stats = self.orders[order_id] = OrderStats()
            stats.last_errcode = errcode
            stats.errcodes[errcode if errcode is not None else "http_error"] += 1
            if errcode == E.ORDER_ID_REPEATED:
                stats.repeats += 1

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
            stats = self.orders.get(order_id)
            if stats is None:
                stats = self.orders[order_id] = OrderStats()
            stats.successes += 1
            return E.ok(code=code, openid=openid)

    def auth_data(self, body: Any) -> dict[str, Any]:
        """POST /card/invoice/getauthdata once the token is known to be valid."""
        if not isinstance(body, dict):
            return E.error(E.DATA_FORMAT)
        order_id, s_pappid = body.get("order_id"), body.get("s_pappid")
        if not (_text(order_id) and _text(s_pappid)):
            return E.error(E.DATA_FORMAT)
        with self._lock:
            status = self.authorization_status(order_id)
            record = self.authorizations.get(order_id)
            if status == UNAUTHORIZED:
                auth_time = 0  # no authorisation to date
            elif record is not None:
                auth_time = record["auth_time"]
            else:
                auth_time = self._implicit_auth_time.setdefault(order_id, int(self.clock()))
            return E.ok(invoice_status=AUTH_STATUSES[status], auth_time=auth_time)

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
        if not (_text(order_id) and _text(s_pappid) and _text(reason)):
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
        if not (_text(card_id) and _text(code)) or wanted not in REIMBURSE_STATUSES:
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

    def log_call(
        self,
        at: float,
        endpoint: str,
        order_id: str | None,
        errcode: int | None,
        invoice_status: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "at": at, "endpoint": endpoint, "order_id": order_id, "errcode": errcode,
        }  # fmt: skip
        if invoice_status is not None:
            entry["invoice_status"] = invoice_status
        with self._lock:
            self.call_log.append(entry)

    def call_log_list(self, since: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self.call_log if since is None or e["at"] >= since]

    def note_answer(self, endpoint: str, order_id: str, errcode: int | None) -> None:
        """One answer to a call naming `order_id` (None: no JSON answer, an HTTP error)."""
        with self._lock:
            per_order = self.order_answers.setdefault(order_id, {})
            answers = per_order.get(endpoint)
            if answers is None:
                answers = per_order[endpoint] = Counter()
            answers[errcode if errcode is not None else "http_error"] += 1

    def _beijing_day(self) -> int:
        return int((self.clock() + _UTC8_OFFSET_S) // 86_400)

    # ------------------------------------------------------------- snapshots
    def tokens_list(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self.clock()
            return [tok.to_dict(now) for tok in self.tokens.values()]

    def bills_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(bill) for bill in self.bills.values()]

    def orders_dict(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {order_id: stats.to_dict() for order_id, stats in self.orders.items()}

    def order_stats(self, order_id: str) -> dict[str, Any] | None:
        with self._lock:
            stats = self.orders.get(order_id)
            return None if stats is None else stats.to_dict()

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

    def answers_for(self, order_id: str) -> dict[str, dict[str, int]]:
        with self._lock:
            per_order = self.order_answers.get(order_id, {})
            return {ep: {str(k): v for k, v in c.items()} for ep, c in per_order.items()}

    def inserts_today(self) -> dict[str, int]:
        """Successful inserts per appid this Beijing calendar day (the daily insert limit)."""
        with self._lock:
            day = self._beijing_day()
            return {appid: n for (d, appid), n in self._inserts_per_day.items() if d == day}

    def media_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [media.to_dict() for media in self.media.values()]

    def calls_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.calls)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            orders = self.orders.values()
            return {
                "started_at": self.started_at,
                "now": self.clock(),
                "calls": dict(self.calls),
                "total_calls": sum(self.calls.values()),
                "bills": len(self.bills),
                "media": len(self.media),
                "tokens": self.tokens_list(),
                "orders": {
                    "attempted": len(self.orders),
                    "insert_attempts": sum(s.attempts for s in orders),
                    "inserted": sum(1 for s in orders if s.successes),
                    "inserted_more_than_once": sorted(
                        o for o, s in self.orders.items() if s.successes > 1
                    ),
                    "repeat_answers": sum(s.repeats for s in orders),
                },
                "authorizations": len(self.authorizations),
                "rejections": len(self.rejections),
                "reimburse_statuses": dict(
                    Counter(r["reimburse_status"] for r in self.card_status.values())
                ),
                "inserts_today": self.inserts_today(),
                "faulted_calls": self.faulted_calls,
                "lost_answers": self.lost_answers,
                "config": self.settings.to_dict(),
            }


def _append_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(text)


def _expires_in(remaining: float) -> int:
    return max(1, math.ceil(remaining))


def _expire_now(items: Iterable[Any], now: float) -> int:
    """Set every still-valid item's `expires_at` to `now`; returns how many were valid."""
    alive = 0
    for item in items:
        if item.expires_at > now:
            alive += 1
            item.expires_at = now
    return alive
