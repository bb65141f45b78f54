"""The sandbox's JSON over HTTP: a request's body read (INVALID when it is not JSON) and an
answer written as pre-encoded bytes, for the WeChat endpoints and the admin API alike."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

INVALID = object()  # a body that is not JSON


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(_dumps(payload), status_code=status, media_type="application/json")


def loads(body: bytes) -> Any:
    if not body:
        return INVALID
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return INVALID
