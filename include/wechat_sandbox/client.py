"""A small client for the sandbox's admin API, and the sandbox's default credentials."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from wechat_sandbox.config import (
    ADMIN_TOKEN_HEADER,
    DEFAULT_APPID,
    DEFAULT_CARD_ID,
    DEFAULT_PORT,
    DEFAULT_SECRET,
    ENV_APPID,
    ENV_CARD_IDS,
    ENV_PORT,
    ENV_SECRET,
)

__all__ = [
    "DEFAULT_APPID",
    "DEFAULT_CARD_ID",
    "DEFAULT_PORT",
    "DEFAULT_SECRET",
    "ENV_APPID",
    "ENV_CARD_IDS",
    "ENV_PORT",
    "ENV_SECRET",
    "SandboxAdmin",
    "SandboxAdminError",
    "SandboxWeChat",
    "insertbill_body",
]


class SandboxAdminError(RuntimeError):
    """The admin API refused a request (bad setting, bad fault rule, unknown id...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"sandbox admin API answered {status}: {message}")
        self.status = status


class SandboxAdmin:
    """Drives `/_sandbox/` of a running sandbox with its admin token, e.g.
    `SandboxAdmin("http://127.0.0.1:8765", admin_token=...)` (`SandboxProcess.admin()` makes
    one). `tokens_file` is the sandbox's WECHAT_SANDBOX_TOKENS_FILE, for `issued_tokens()`."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        *,
        admin_token: str | None = None,
        tokens_file: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.tokens_file = tokens_file
        self._session = requests.Session()
        if admin_token:
            self._session.headers[ADMIN_TOKEN_HEADER] = admin_token

    @property
    def url(self) -> str:
        return self.base_url

    def __repr__(self) -> str:
        return f"SandboxAdmin({self.base_url!r})"

    def close(self) -> None:
        self._session.close()

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        response = self._session.request(
            method, f"{self.base_url}/_sandbox/{path}", json=json, timeout=self.timeout
        )
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise SandboxAdminError(response.status_code, message)
        return response.json()

    # state
    def reset(self) -> None:
        """Back to the initial state: no bills, media, tokens, faults, authorisations, counts."""
        self._call("POST", "reset")

    def state(self) -> dict[str, Any]:
        return self._call("GET", "state")

    def calls(self) -> dict[str, int]:
        """Calls per endpoint (errors and fault-injected answers included)."""
        return self._call("GET", "calls")

    def call_log(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every call in arrival order (since a Unix time): `{at, endpoint, order_id, errcode}`
        (errcode None: no JSON answer), plus `invoice_status` for getauthdata."""
        query = "" if since is None else f"?since={since!r}"
        return self._call("GET", f"calls/log{query}")["calls"]

    def tokens(self) -> list[dict[str, Any]]:
        """Tokens issued: kind, appid, times, validity and `sha256`, never the token."""
        return self._call("GET", "tokens")["tokens"]

    def issued_tokens(self) -> list[str]:
        """The tokens themselves, from the sandbox's tokens file (the harness's own file: the
        admin API never answers with a token)."""
        if not self.tokens_file:
            raise RuntimeError("no tokens file: start the sandbox with WECHAT_SANDBOX_TOKENS_FILE")
        try:
            with open(self.tokens_file, encoding="utf-8") as issued:
                return [line.strip() for line in issued if line.strip()]
        except FileNotFoundError:
            return []

    def bills(self) -> list[dict[str, Any]]:
        """Every inserted bill, in insertion order."""
        return self._call("GET", "bills")["bills"]

    def bill(self, order_id: str) -> dict[str, Any]:
        """`{bill: {...} | None, order: {attempts, successes, repeats, last_errcode, errcodes}}`."""
        return self._call("GET", f"bills/{requests.utils.quote(order_id, safe='')}")

    def orders(self) -> dict[str, dict[str, Any]]:
        """Per order_id: insertbill attempts, successes, 72056 answers, last errcode."""
        return self._call("GET", "orders")["orders"]

    def media(self) -> list[dict[str, Any]]:
        return self._call("GET", "media")["media"]

    def rejections(self) -> dict[str, dict[str, Any]]:
        """Per refused order_id: `{s_pappid, reason, url, rejected_at, repeats, appid}`
        (`repeats`: later rejectinsert calls, each answered 72035)."""
        return self._call("GET", "rejections")["rejections"]

    def statuses(self) -> dict[str, dict[str, Any]]:
        """Per inserted order_id: `{card_id, code, reimburse_status, updated_at, history}`."""
        return self._call("GET", "statuses")["statuses"]

    def set_bill_status(self, order_id: str, reimburse_status: str) -> dict[str, Any]:
        """Set a bill's reimbursement status as another party would (a reimbursing unit locking
        or writing it off), by WeChat's rules: `{errcode, status}`, errcode 72060/72061 when
        the bill was already cancelled/closed."""
        return self._call(
            "PUT",
            f"statuses/{requests.utils.quote(order_id, safe='')}",
            json={"reimburse_status": reimburse_status},
        )

    def order_answers(self, order_id: str) -> dict[str, dict[str, int]]:
        """Every answer to a call naming this order, per endpoint: `{endpoint: {errcode: n}}`
        ("http_error" for an answer that was not JSON), fault-injected ones included."""
        return self._call("GET", f"orders/{requests.utils.quote(order_id, safe='')}/answers")[
            "answers"
        ]

    # settings
    def config(self) -> dict[str, Any]:
        return self._call("GET", "config")

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings now, e.g. `configure(token_ttl_s=1, card_ids=[...])`; returns all."""
        return self._call("POST", "config", json=settings)

    def set_authorization(self, order_id: str, status: str) -> dict[str, Any]:
        """status: "authorized" (getauthdata "auth success") | "unauthorized" (insert -> 72038,
        "never auth") | "rejected" (72035, "reject insert")."""
        return self._call(
            "PUT",
            f"authorizations/{requests.utils.quote(order_id, safe='')}",
            json={"status": status},
        )

    def set_authorizations(self, statuses: Mapping[str, str]) -> None:
        self._call("POST", "authorizations", json={"orders": dict(statuses)})

    def links(self) -> list[dict[str, Any]]:
        """Every authorisation link made (getbillauthurl), oldest first."""
        return self._call("GET", "links")

    def expire_tickets(self) -> int:
        return self._call("POST", "tickets/expire")["expired"]

    def expire_tokens(self) -> int:
        """Expire every token now (they answer 42001); returns how many were valid."""
        return self._call("POST", "tokens/expire")["expired"]

    def expire_media(self) -> int:
        """Expire every uploaded PDF now (insertbill then answers 40007)."""
        return self._call("POST", "media/expire")["expired"]

    # faults
    def add_fault(self, **rule: Any) -> int:
        """Add a fault rule (see wechat_sandbox.faults for the fields); returns its id."""
        return self._call("POST", "faults", json=rule)["id"]

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "faults")["faults"]

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def remove_fault(self, fault_id: int) -> None:
        self._call("DELETE", f"faults/{int(fault_id)}")


def insertbill_body(
    order_id: str,
    s_pdf_media_id: str,
    *,
    fee: int = 12300,
    title: str = "沙箱测试缴款单位",
    billing_time: int = 1_700_000_000,
    billing_no: str | None = None,
    billing_code: str = "11010124",
    card_id: str = DEFAULT_CARD_ID,
    appid: str = DEFAULT_APPID,
) -> dict[str, Any]:
    """An insertbill body in the shape the sandbox checks (the interface document's example)."""
    return {
        "order_id": order_id,
        "card_id": card_id,
        "appid": appid,
        "card_ext": {
            "user_card": {
                "invoice_user_data": {
                    "fee": fee,
                    "title": title,
                    "billing_time": billing_time,
                    "billing_no": billing_no if billing_no is not None else f"NO{order_id}",
                    "billing_code": billing_code,
                    "s_pdf_media_id": s_pdf_media_id,
                }
            }
        },
    }


class SandboxWeChat:
    """Raw WeChat calls against a sandbox (for tests and benchmarks): answers as parsed JSON.

    No retries, no token cache: every method is one HTTP request. `timeout` applies per call.
    """

    def __init__(
        self,
        base_url: str,
        appid: str = DEFAULT_APPID,
        secret: str = DEFAULT_SECRET,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.appid = appid
        self.secret = secret
        self.timeout = timeout
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return self.session.request(method, f"{self.base_url}{path}", **kwargs)

    def stable_token(self, force_refresh: bool = False, **overrides: Any) -> dict[str, Any]:
        body = {
            "grant_type": "client_credential",
            "appid": self.appid,
            "secret": self.secret,
            "force_refresh": force_refresh,
            **overrides,
        }
        return self.request("POST", "/cgi-bin/stable_token", json=body).json()

    def classic_token(self, **overrides: Any) -> dict[str, Any]:
        params = {"grant_type": "client_credential", "appid": self.appid, "secret": self.secret}
        params.update(overrides)
        return self.request("GET", "/cgi-bin/token", params=params).json()

    def access_token(self) -> str:
        answer = self.stable_token()
        if "access_token" not in answer:
            raise RuntimeError(f"stable_token failed: {answer}")
        return answer["access_token"]

    def setpdf(
        self, token: str | None, data: bytes, field: str = "pdf", filename: str = "bill.pdf"
    ) -> dict[str, Any]:
        params = {} if token is None else {"access_token": token}
        files = {field: (filename, data, "application/pdf")}
        return self.request(
            "POST", "/card/invoice/platform/setpdf", params=params, files=files
        ).json()

    def insertbill(self, token: str | None, body: Any, **kwargs: Any) -> dict[str, Any]:
        return self._post_json("/nontax/insertbill", token, body, **kwargs)

    def getauthdata(self, token: str | None, order_id: str, s_pappid: str = "sandbox") -> Any:
        body = {"order_id": order_id, "s_pappid": s_pappid}
        return self._post_json("/card/invoice/getauthdata", token, body)

    def rejectinsert(
        self,
        token: str | None,
        order_id: str,
        reason: str = "已退款，不再开具票据",
        s_pappid: str = "sandbox",
        url: str | None = None,
    ) -> Any:
        body = {"s_pappid": s_pappid, "order_id": order_id, "reason": reason}
        if url is not None:
            body["url"] = url
        return self._post_json("/card/invoice/rejectinsert", token, body)

    def updatestatus(
        self, token: str | None, card_id: str, code: str, reimburse_status: str
    ) -> Any:
        body = {"card_id": card_id, "code": code, "reimburse_status": reimburse_status}
        return self._post_json("/card/invoice/platform/updatestatus", token, body)

    def getpdf(self, token: str | None, s_media_id: str) -> dict[str, Any]:
        body = {"action": "get_url", "s_media_id": s_media_id}
        return self._post_json("/card/invoice/platform/getpdf", token, body)

    def _post_json(self, path: str, token: str | None, body: Any, **kwargs: Any) -> Any:
        params = {} if token is None else {"access_token": token}
        return self.request("POST", path, params=params, json=body, **kwargs).json()
