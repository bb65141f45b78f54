"""Checks an order's fields and its PDF before anything is sent to WeChat.

An order that WeChat would refuse for its data (47001, 72031, 72017, 72043...) costs a call and
ends the same way, later and with a vaguer reason; an order with a wrong fee or date would
put a wrong bill into someone's card package. So the raw values (from the order database, or
from JSON with any type) are checked first, and every problem is reported at once so that a
person fixes the order in one go.

The rules, and why:
- `fee`: a JSON integer of fen (分), positive and at most `Limits.max_fee`. Floats, strings and
  booleans are refused rather than converted: 12.5 or "12" leaves unclear whether yuan or fen
  were meant.
- `billing_time`: an integer 10-digit Unix time (seconds; 13 digits are milliseconds), not
  before `Limits.earliest_billing_time` and not more than `Limits.max_future_s` ahead of now.
- `title`: text, not blank, no control or invisible formatting characters, no surrounding
  whitespace (WeChat compares it with the card's registered title: 72017), at most
  `Limits.max_title_len` characters.
- `order_id`, `card_id`, `appid`, `billing_no`, `billing_code`: non-empty text of ASCII letters,
  digits, `_` and `-` only, bounded in length. WeChat's ids (card ids such as
  `pjZ8Yt7xiy3b9UfffRIA4Tm2xTnw`, appids `wx` + 16 hex digits) and the fiscal bill numbers fit
  that set; quotes, spaces, `;` or non-ASCII digits in them are a data error. The appid is not
  held to the `wx` + 16 hex form, so test and sandbox accounts pass.
Each field reports its first broken rule only: once a fee is not a number, its range says
nothing more.
- `card_id` against the account's configured cards (`parse_card_ids`, `check_card_allowed`):
  only when the WeChat Connection lists them in its extra `card_ids`; without that list an
  unknown card is found out by WeChat's 40078.

Requests after the insert (`check_refusal`, `check_status_change`): refusing an order
(rejectinsert) wants its order_id, a reason the payer is shown (text, not blank, no control or
invisible characters, at most `MAX_REFUSAL_REASON_CHARS`) and optionally an http(s) link;
setting a bill's status wants its card_id, its code and one of WeChat's four reimburse
statuses (`REIMBURSE_STATUSES`, short names accepted).

The order's PDF location is checked apart (`pdf_paths`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from wechat_nontax.settings import BEIJING_TIME
from wechat_nontax.wechat.bill import Order, bill_fields
from wechat_nontax.wechat.errors import InvalidOrderError

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_REFUSAL_REASON_CHARS",
    "REIMBURSE_STATUSES",
    "InvalidOrderError",
    "Limits",
    "Problem",
    "check_card_allowed",
    "check_order_fields",
    "check_pdf",
    "check_refusal",
    "check_status_change",
    "format_problems",
    "parse_card_ids",
    "reimburse_status",
    "shown",
    "type_of",
    "validate_order",
]

PDF_MAGIC = b"%PDF-"


@dataclass(frozen=True)
class Limits:
    """Bounds on an order's fields; the defaults are the pipeline's, not WeChat's.

    - `max_fee`: 1,000,000,000 fen = 10 million yuan, far above any single non-tax fee, so
      only a unit mix-up or a corrupt row reaches it.
    - `earliest_billing_time`: 2017-01-01 00:00 UTC+8, before the fiscal bill card existed.
    - `max_future_s`: a bill may be dated at most a day ahead (clock skew, time zone slips).
    - `max_title_len` and the id lengths: above any real value; `max_order_id_len` matches the
      order table's constraint.
    - `max_pdf_bytes`: 2 MiB; WeChat documents no limit for setpdf, so this is an assumption.
    """

    max_fee: int = 1_000_000_000
    earliest_billing_time: int = 1_483_200_000  # 2017-01-01T00:00:00+08:00
    max_future_s: int = 86_400
    max_title_len: int = 64
    max_billing_no_len: int = 32
    max_billing_code_len: int = 32
    max_order_id_len: int = 64
    max_card_id_len: int = 64
    max_appid_len: int = 32
    max_pdf_bytes: int = 2 * 1024 * 1024


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Problem:
    """Why one field of an order cannot be sent; `reason` follows the field name in a sentence."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


# WeChat's id character set, ASCII only (str.isdigit would let '١٢' through).
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")
_SAFE_ID_TEXT = "ASCII letters, digits, '_' and '-'"
# Control (Cc), invisible formatting such as bidi overrides and zero-width joiners (Cf),
# surrogates (Cs), and line/paragraph separators: none belongs in a one-line bill title.
_BAD_TITLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHOWN_CHARS = 40


def shown(value: object) -> str:
    """The value for a reason: repr (escapes control characters), truncated."""
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS]) + "..."
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def type_of(value: object) -> str:
    """The value with its type, for a value of the wrong type: `str '12'`, `bool True`."""
    return f"{type(value).__name__} {shown(value)}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _date(unix_time: int) -> str:
    # Bills are dated in China's calendar.
    return datetime.fromtimestamp(unix_time, BEIJING_TIME).strftime("%Y-%m-%d %H:%M:%S UTC+8")


def _check_fee(value: object, *, now: float, limits: Limits) -> str | None:
    if not _is_int(value):
        return f"must be an integer number of fen (分), got {type_of(value)}"
    if value <= 0:
        return f"must be a positive number of fen (分), got {value}"
    if value > limits.max_fee:
        return (
            f"must be at most {limits.max_fee} fen ({limits.max_fee / 100:,.2f} yuan), "
            f"got {value}: a yuan/fen mix-up?"
        )
    return None


def _check_billing_time(value: object, *, now: float, limits: Limits) -> str | None:
    if not _is_int(value):
        return f"must be an integer Unix time in seconds, got {type_of(value)}"
    if value <= 0:
        return f"must be a positive 10-digit Unix time in seconds, got {value}"
    digits = len(str(value))
    if digits != 10:
        hint = ": milliseconds instead of seconds?" if digits == 13 else ""
        return f"must be a 10-digit Unix time in seconds, got {digits} digits ({value}){hint}"
    if value < limits.earliest_billing_time:
        return (
            f"must not be before {_date(limits.earliest_billing_time)}, "
            f"got {value} ({_date(value)})"
        )
    if value > now + limits.max_future_s:
        return (
            f"must not be more than {limits.max_future_s} s in the future, "
            f"got {value} ({_date(value)}) at {_date(int(now))}"
        )
    return None


def _one_line_text(value: object) -> str | None:
    """What is wrong with a one-line text shown to a person: not text, blank, control or
    invisible characters; None when it is fine so far."""
    if not isinstance(value, str):
        return f"must be text, got {type_of(value)}"
    if not value.strip():
        return f"must not be empty or blank, got {shown(value)}"
    bad = sorted({c for c in value if unicodedata.category(c) in _BAD_TITLE_CATEGORIES})
    if bad:
        return (
            f"must not contain control or invisible characters "
            f"({', '.join(f'U+{ord(c):04X}' for c in bad)}), got {shown(value)}"
        )
    return None


def _check_title(value: object, *, now: float, limits: Limits) -> str | None:
    problem = _one_line_text(value)
    if problem is not None:
        return problem
    if value != value.strip():
        return (
            "must not start or end with whitespace (WeChat compares it with the card's "
            f"registered title), got {shown(value)}"
        )
    if len(value) > limits.max_title_len:
        return (
            f"must be at most {limits.max_title_len} characters, got {len(value)}: {shown(value)}"
        )
    return None


def _id_checker(limit: Callable[[Limits], int]) -> Callable[..., str | None]:
    def check(value: object, *, now: float, limits: Limits) -> str | None:
        if not isinstance(value, str):
            return f"must be text, got {type_of(value)}"
        if not value:
            return "must not be empty"
        max_len = limit(limits)
        if len(value) > max_len:
            return f"must be at most {max_len} characters, got {len(value)}: {shown(value)}"
        if not _SAFE_ID.fullmatch(value):
            bad = sorted({c for c in value if not _SAFE_ID.fullmatch(c)})
            found = ", ".join(repr(c) for c in bad[:10])
            return f"may contain only {_SAFE_ID_TEXT}, found {found} in {shown(value)}"
        return None

    return check


_FIELD_CHECKS: Mapping[str, Callable[..., str | None]] = {
    "order_id": _id_checker(lambda limits: limits.max_order_id_len),
    "card_id": _id_checker(lambda limits: limits.max_card_id_len),
    "appid": _id_checker(lambda limits: limits.max_appid_len),
    "fee": _check_fee,
    "title": _check_title,
    "billing_time": _check_billing_time,
    "billing_no": _id_checker(lambda limits: limits.max_billing_no_len),
    "billing_code": _id_checker(lambda limits: limits.max_billing_code_len),
}
_check_code = _id_checker(lambda limits: MAX_BILL_CODE_LEN)


def check_order_fields(
    fields: Mapping[str, object], *, now: float, limits: Limits = DEFAULT_LIMITS
) -> list[Problem]:
    """Every problem with an order's bill fields (`bill.BILL_FIELDS`); [] means valid.

    `fields` holds raw values of any type; keys beyond the bill fields are ignored. `now` is
    the current Unix time, for the future bound of `billing_time`.
    """
    problems = []
    for name, check in _FIELD_CHECKS.items():
        value = fields.get(name)
        reason = "is missing" if value is None else check(value, now=now, limits=limits)
        if reason is not None:
            problems.append(Problem(name, reason))
    return problems


# rejectinsert's reason is shown to the payer in WeChat. WeChat documents no limit for it: at most
# this many characters (Chinese or not) is the pipeline's assumption (README, "Assumptions"); the
# sandbox answers 47001 beyond the same number.
MAX_REFUSAL_REASON_CHARS = 100
MAX_REFUSAL_URL_CHARS = 1024  # the optional link: our bound, far above a real one
MAX_BILL_CODE_LEN = 64  # an inserted bill's code (13 digits in the sandbox)
_HTTP_URL = re.compile(r"https?://[^\s]+")

# platform/updatestatus's statuses, by their short names. There is no RELEASE: unlocking is INIT.
REIMBURSE_STATUSES: Mapping[str, str] = {
    "INIT": "INVOICE_REIMBURSE_INIT",
    "LOCK": "INVOICE_REIMBURSE_LOCK",
    "CLOSURE": "INVOICE_REIMBURSE_CLOSURE",
    "CANCEL": "INVOICE_REIMBURSE_CANCEL",  # red-reversed (冲红): voiding a bill
}


def reimburse_status(value: object) -> str | None:
    """WeChat's full reimburse_status for a short (`CANCEL`) or full name; None if unknown."""
    if not isinstance(value, str):
        return None
    if value in REIMBURSE_STATUSES.values():
        return value
    return REIMBURSE_STATUSES.get(value)


def _check_reason(value: object) -> str | None:
    problem = _one_line_text(value)
    if problem is None and len(value) > MAX_REFUSAL_REASON_CHARS:
        problem = (
            f"must be at most {MAX_REFUSAL_REASON_CHARS} characters (the payer is shown it), "
            f"got {len(value)}: {shown(value)}"
        )
    return problem


def _check_url(value: object) -> str | None:
    if not isinstance(value, str) or not _HTTP_URL.fullmatch(value):
        return f"must be an http:// or https:// link without spaces, got {shown(value)}"
    if len(value) > MAX_REFUSAL_URL_CHARS:
        return f"must be at most {MAX_REFUSAL_URL_CHARS} characters, got {len(value)}"
    return None


def _problems(checks: Iterable[tuple[str, str | None]]) -> list[Problem]:
    return [Problem(name, reason) for name, reason in checks if reason is not None]


def check_refusal(order_id: object, reason: object, url: object = None) -> list[Problem]:
    """Every problem with a request to refuse an order (rejectinsert); [] means it may be sent."""
    return _problems(
        [
            ("order_id", _FIELD_CHECKS["order_id"](order_id, now=0, limits=DEFAULT_LIMITS)),
            ("reason", _check_reason(reason)),
            ("url", None if url is None else _check_url(url)),
        ]
    )


AUTH_LINK_SOURCES = ("web", "app")  # getbillauthurl's `source`: official account or app


def check_auth_link(
    order_id: object, money_fen: object, source: object, redirect_url: object = None
) -> list[Problem]:
    """Every problem with a request for an order's authorisation link (getbillauthurl)."""
    return _problems(
        [
            ("order_id", _FIELD_CHECKS["order_id"](order_id, now=0, limits=DEFAULT_LIMITS)),
            ("money", _check_fee(money_fen, now=0, limits=DEFAULT_LIMITS)),
            (
                "source",
                None
                if source in AUTH_LINK_SOURCES
                else f"must be one of {', '.join(AUTH_LINK_SOURCES)}, got {shown(source)}",
            ),
            ("redirect_url", None if redirect_url is None else _check_url(redirect_url)),
        ]
    )


def check_status_change(card_id: object, code: object, status: object) -> list[Problem]:
    """Every problem with a request to set a bill's reimburse status (platform/updatestatus)."""
    wanted = reimburse_status(status)
    known = ", ".join(REIMBURSE_STATUSES)
    return _problems(
        [
            ("card_id", _FIELD_CHECKS["card_id"](card_id, now=0, limits=DEFAULT_LIMITS)),
            ("code", _check_code(code, now=0, limits=DEFAULT_LIMITS)),
            ("status", None if wanted else f"must be one of {known}, got {shown(status)}"),
        ]
    )


def parse_card_ids(value: object) -> frozenset[str] | None:
    """The account's card ids from configuration (the WeChat Connection's extra `card_ids`): a
    list of strings or one comma-separated string. None when not configured (missing, null, or
    empty): then no order is refused for its card before WeChat answers 40078."""
    if value is None:
        return None
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list | tuple | set | frozenset) and all(
        isinstance(item, str) for item in value
    ):
        items = [item.strip() for item in value]
    else:
        raise ValueError(
            f"card_ids must be a list of card ids or a comma-separated string, got {type_of(value)}"
        )
    cards = frozenset(item for item in items if item)
    return cards or None


def check_card_allowed(card_id: object, allowed: Iterable[str] | None) -> Problem | None:
    """The problem with an order's card when the account's card ids are configured and it is
    not one of them (WeChat would answer 40078); None when allowed or not configured."""
    if allowed is None or not isinstance(card_id, str) or card_id in allowed:
        return None
    return Problem(
        "card_id",
        f"{shown(card_id)} is not one of this account's card ids (the WeChat Connection's "
        "extra card_ids): fix the order's card_id, or add the card to the configuration",
    )


def validate_order(order: Order, *, now: float, limits: Limits = DEFAULT_LIMITS) -> list[Problem]:
    """Every problem with an order's bill fields; [] means valid. The PDF is checked apart."""
    return check_order_fields(bill_fields(order), now=now, limits=limits)


def check_pdf(data: bytes | None, *, limits: Limits = DEFAULT_LIMITS) -> Problem | None:
    """The problem with a bill's PDF content, or None when it may be uploaded."""
    if data is None:
        return Problem("pdf", "PDF not found")
    if len(data) == 0:
        return Problem("pdf", "PDF is empty (0 bytes)")
    if bytes(data[: len(PDF_MAGIC)]) != PDF_MAGIC:
        # Never quote the content: a reason is stored, logged and sent to the webhook, and
        # the file may be anything the path led to.
        return Problem("pdf", f"is not a PDF: it does not start with {PDF_MAGIC!r}")
    if len(data) > limits.max_pdf_bytes:
        return Problem(
            "pdf", f"PDF is {len(data)} bytes, more than the limit of {limits.max_pdf_bytes} bytes"
        )
    return None


def format_problems(problems: Iterable[Problem]) -> str:
    """The problems on one line, as an order's recorded reason: `fee: ...; title: ...`."""
    return "; ".join(str(problem) for problem in problems)
