"""WeChat error codes the sandbox answers, with WeChat-like messages.

Like WeChat, an error's errmsg ends with " rid: ..." (a request id), so callers must decide on
`errcode`, never on the message text.
"""

from __future__ import annotations

import os
import time
from typing import Any

OK = 0
SYSTEM_BUSY = -1
INVALID_CREDENTIAL = 40001
INVALID_GRANT_TYPE = 40002
INVALID_MEDIA_ID = 40007
INVALID_APPID = 40013
TOKEN_NOT_LATEST = 40014
INVALID_CODE = 40056
INVALID_CARD = 40078
INVALID_APPSECRET = 40125
TOKEN_MISSING = 41001
APPID_MISSING = 41002
SECRET_MISSING = 41004
TOKEN_EXPIRED = 42001
DAILY_QUOTA = 45009
MINUTE_QUOTA = 45011
DATA_FORMAT = 47001
INVALID_ARGS = 40097
BUSINESS_REJECTED = 72035
INVOICE_BUSY = 72036
ORDER_NOT_AUTHORISED = 72038
INVALID_PDF = 72040
BILLING_REPEATED = 72042
NEED_AUTH_AGAIN = 72048
INSERTING = 72054
ORDER_ID_REPEATED = 72056
TODAY_INSERT_LIMIT = 72057
CARD_CANCELLED = 72060
CARD_CLOSED = 72061
PDF_CHECK_ERROR = 72082

MESSAGES: dict[int, str] = {
    OK: "ok",
    SYSTEM_BUSY: "system error",
    INVALID_CREDENTIAL: "invalid credential, access_token is invalid or not latest",
    INVALID_GRANT_TYPE: "invalid grant_type",
    INVALID_MEDIA_ID: "invalid media_id",
    INVALID_APPID: "invalid appid",
    TOKEN_NOT_LATEST: "invalid access_token",
    INVALID_CODE: "invalid serial code",
    INVALID_CARD: "invalid card status",
    INVALID_APPSECRET: "invalid appsecret",
    TOKEN_MISSING: "access_token missing",
    APPID_MISSING: "appid missing",
    SECRET_MISSING: "appsecret missing",
    TOKEN_EXPIRED: "access_token expired",
    DAILY_QUOTA: "reach max api daily quota limit",
    MINUTE_QUOTA: "api minute-quota reach limit, must slower, retry next minute",
    DATA_FORMAT: "data format error",
    INVALID_ARGS: "invalid args",
    BUSINESS_REJECTED: "business rejected",
    INVOICE_BUSY: "invoice is busy, try again please",
    ORDER_NOT_AUTHORISED: "order not authorised",
    INVALID_PDF: "invalid pdf",
    BILLING_REPEATED: "billing_code and billing_no repeated",
    NEED_AUTH_AGAIN: "insert too many, need auth again",
    INSERTING: "inserting, wait",
    ORDER_ID_REPEATED: "order_id repeated",
    TODAY_INSERT_LIMIT: "today insert limit",
    CARD_CANCELLED: "invoice has been cancelled",
    CARD_CLOSED: "invoice has been closed",
    PDF_CHECK_ERROR: "pdf check error",
}


def request_id() -> str:
    return f"{int(time.time()):08x}-{os.urandom(4).hex()}-{os.urandom(4).hex()}"


def error(errcode: int, errmsg: str | None = None) -> dict[str, Any]:
    """A WeChat error answer: `{errcode, errmsg}`."""
    message = errmsg if errmsg is not None else MESSAGES.get(errcode, "error")
    return {"errcode": errcode, "errmsg": f"{message} rid: {request_id()}"}


def ok(**fields: Any) -> dict[str, Any]:
    return {"errcode": OK, "errmsg": "ok", **fields}


def is_text(value: Any) -> bool:
    """What a call's text field must be, else 47001: a JSON string, not empty."""
    return isinstance(value, str) and value != ""
