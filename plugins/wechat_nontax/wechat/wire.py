"""One request of the WeChat hook on the wire: prepared for this API, and its answer read.

Free of Airflow: the hook (`hook.WeChatNonTaxHook`) owns the session, the Connection and the
token; this module says what a request looks like and what an answer means.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import requests
from requests.cookies import RequestsCookieJar
from requests.structures import CaseInsensitiveDict

from wechat_nontax.wechat import errors


def prepared_request(
    session: requests.Session,
    method: str,
    url: str,
    query: dict[str, Any],
    body: bytes | None,
    headers: dict[str, str],
    files: Any,
) -> requests.PreparedRequest:
    """The request `session.prepare_request` would make for this API, less what the API never
    uses: cookies, hooks, and the session's or ~/.netrc's basic auth (never sent: see
    `WeChatNonTaxHook.session`). A tenth of its CPU: it merges every setting and looks for a
    netrc file at every call (`bench/batch_cpu.py --profile`). The session's headers (the
    Connection's extra) are sent as before."""
    prepared = requests.PreparedRequest()
    prepared.method = method
    if query:
        url = f"{url}{'&' if '?' in url else '?'}{urlencode(query)}"
    prepared.url = url
    merged = CaseInsensitiveDict(session.headers)
    merged.update(headers)
    prepared.headers = merged
    # No cookie is sent; requests reads the jar when it looks at a redirect's target.
    prepared._cookies = RequestsCookieJar()
    prepared.prepare_body(body, files)
    return prepared


def describe(exc: BaseException) -> str:
    # requests' messages name the URL, query string included: keep the kind and the reason.
    return f"{type(exc).__name__}: {exc}"


def read_answer(
    response: requests.Response, *, step: str, secrets: tuple[str | None, ...]
) -> dict[str, Any]:
    """The answer of a call that came back: its JSON object when `errcode` is 0, else the
    policy's error for the HTTP status, the malformed answer or the errcode (with `secrets`
    taken out of WeChat's errmsg)."""
    if response.is_redirect:
        raise errors.error_for(
            "http_4xx", f"HTTP {response.status_code}, a redirect: not followed", step=step
        )
    if response.status_code >= 500:
        raise errors.error_for("http_5xx", f"HTTP {response.status_code}", step=step)
    if response.status_code >= 400:
        raise errors.error_for("http_4xx", f"HTTP {response.status_code}", step=step)
    try:
        answer = response.json()
    except ValueError:
        raise errors.error_for("malformed_answer", "the answer is not JSON", step=step) from None
    if not isinstance(answer, dict):
        raise errors.error_for("malformed_answer", "the answer is not an object", step=step)
    errcode = answer.get("errcode", 0)
    if not isinstance(errcode, int) or isinstance(errcode, bool):
        raise errors.error_for("malformed_answer", f"errcode {errcode!r}", step=step)
    if errcode != 0:
        errmsg = errors.redact(str(answer.get("errmsg", "")), *secrets)
        raise errors.error_for(errcode, errmsg, step=step)
    return answer
