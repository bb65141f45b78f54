"""`WeChatNonTaxHook`: the WeChat non-tax bill API, one method per remote call.

Built on providers-http's `HttpHook` through its public interface (the Connection gives the
base URL, timeouts, proxies and TLS options; `get_conn` builds the session) with three changes
that matter for this API:
- the appid and secret are never sent as HTTP basic auth (HttpHook would put the secret in an
  `Authorization` header of every call) and this hook's own extras are never sent as headers:
  both are taken off the session `get_conn` builds;
- one `requests.Session` per hook, reused by every call and thread of a task, instead of a new
  session (and a Connection lookup) per call;
- answers are judged by `errcode` through the policy table, never by HTTP status alone.

The Connection (default `wechat_nontax_default`): host = API base URL, login = appid,
password = app secret, extras:
  token_mode        "stable_token" (default), "token" (classic /cgi-bin/token) or "service"
  token_service_url a central token service (mode "service"): GET, answers
                    {"access_token": ..., "expires_in": ...}
  token_margin_s    refresh this long before expiry (default 300)
  timeout           seconds per call (default 15), as HttpHook reads it
  card_ids          optional: the account's card ids (a list, or comma-separated); an order
                    naming another card ends invalid before any call (else WeChat answers 40078)
  s_pappid          the fiscal platform's id that getbillauthurl, getauthdata and rejectinsert
                    name (part of the invoice_url that /card/invoice/seturl returns, which the
                    finance bureau's platform calls once); default: the appid

The authorisation link (getbillauthurl) and its `wx_card` ticket are `auth_link_calls`'s.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from airflow.providers.http.hooks.http import HttpHook
from requests_toolbelt.adapters.socket_options import TCPKeepAliveAdapter

from wechat_nontax.observability import metrics
from wechat_nontax.wechat import errors, validation
from wechat_nontax.wechat.auth_link_calls import AuthLinkCalls
from wechat_nontax.wechat.bill import Order, insertbill_body
from wechat_nontax.wechat.statuses import Step
from wechat_nontax.wechat.token_cache import TokenCache
from wechat_nontax.wechat.wire import describe, prepared_request, read_answer

TOKEN_MODES = ("stable_token", "token", "service")
_OWN_EXTRAS = frozenset(
    {"token_mode", "token_service_url", "token_margin_s", "card_ids", "s_pappid"}
)
DEFAULT_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class InsertedBill:
    code: str
    openid: str


@dataclass(frozen=True, slots=True)
class AuthData:
    invoice_status: str
    auth_time: int | None


class WeChatNonTaxHook(AuthLinkCalls, HttpHook):
    """Calls WeChat's non-tax bill API with a token shared through the order database."""

    conn_name_attr = "wechat_conn_id"
    default_conn_name = "wechat_nontax_default"
    conn_type = "http"
    hook_name = "WeChat non-tax bills"

    def __init__(
        self,
        wechat_conn_id: str = default_conn_name,
        *,
        token_cache_factory: Callable[..., TokenCache] | None = None,
        pool_size: int = 32,
    ) -> None:
        super().__init__(
            method="POST",
            http_conn_id=wechat_conn_id,
            adapter=TCPKeepAliveAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0),
        )
        self.wechat_conn_id = wechat_conn_id
        self._token_cache_factory = token_cache_factory or _orders_db_token_cache
        self._session: requests.Session | None = None
        self._token_cache: TokenCache | None = None
        self._ticket_cache: TokenCache | None = None
        self._appid = ""
        self._secret = ""
        self._extras: dict[str, Any] = {}
        self._masked: set[str] = set()
        self._masked_lock = threading.Lock()
        self._send_settings: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            connection = self.get_connection(self.wechat_conn_id)
            self._appid = connection.login or ""
            self._secret = connection.password or ""
            self._extras = dict(connection.extra_dejson)
            mode = self.token_mode
            if mode not in TOKEN_MODES:
                raise ValueError(f"token_mode must be one of {TOKEN_MODES}, not {mode!r}")
            session = self.get_conn(
                extra_options={
                    "check_response": False,
                    "timeout": float(self._extras.get("timeout", DEFAULT_TIMEOUT_S)),
                }
            )
            # The appid and secret go in the token request only, never in an auth header; the
            # Connection's other extras are sent as headers, never this hook's own.
            session.auth = None
            for name in _OWN_EXTRAS:
                session.headers.pop(name, None)
            self._session = session
        return self._session

    @property
    def appid(self) -> str:
        self.session  # noqa: B018 (reads the Connection)
        return self._appid

    @property
    def allowed_card_ids(self) -> frozenset[str] | None:
        """The card ids the Connection's extra `card_ids` lists; None when it lists none."""
        from wechat_nontax.wechat.validation import parse_card_ids

        self.session  # noqa: B018 (reads the Connection)
        return parse_card_ids(self._extras.get("card_ids"))

    @property
    def call_timeout_s(self) -> float:
        """Seconds one call may take (the Connection's extra `timeout`)."""
        self.session  # noqa: B018 (reads the Connection)
        return float(self._extras.get("timeout", DEFAULT_TIMEOUT_S))

    @property
    def s_pappid(self) -> str:
        """The Connection's extra `s_pappid` (the fiscal platform's id), else the appid."""
        self.session  # noqa: B018 (reads the Connection)
        return str(self._extras.get("s_pappid") or self._appid)

    @property
    def token_mode(self) -> str:
        return str(self._extras.get("token_mode", "stable_token"))

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        for cache in (self._token_cache, self._ticket_cache):
            if cache is not None:
                cache.close()

    # -- the token ----------------------------------------------------------------------------

    def _mask_once(self, token: str) -> None:
        """Keep the token out of every log line. Once per token: in a task, each masking is a
        round trip to Airflow's supervisor process, and the batch's threads share its channel."""
        with self._masked_lock:
            if token not in self._masked:
                _mask(token)
                self._masked.add(token)

    @property
    def token_cache(self) -> TokenCache:
        if self._token_cache is None:
            source = self.token_mode
            if source == "service":
                source = f"service:{self._extras.get('token_service_url', '')}"
            margin = int(self._extras.get("token_margin_s", 300))
            self._token_cache = self._token_cache_factory(self.appid, source, margin)
        return self._token_cache

    def get_access_token(self) -> str:
        """A valid access token from the shared cache, fetched once for everyone when stale."""
        token = self.token_cache.get(self.fetch_access_token)
        self._mask_once(token)
        return token

    def fetch_access_token(self, force_refresh: bool = False) -> tuple[str, int]:
        """Ask WeChat (or the token service) for a token: (access_token, expires_in).
        `force_refresh` applies to stable_token only (the token cache decides when: they are
        limited); the classic endpoint issues a new token at every call anyway."""
        self.session  # noqa: B018
        mode = self.token_mode
        if mode == "service":
            answer = self._send("token", "GET", self._extras["token_service_url"], absolute=True)
        elif mode == "token":
            answer = self._send(
                "token",
                "GET",
                "/cgi-bin/token",
                params={
                    "grant_type": "client_credential",
                    "appid": self._appid,
                    "secret": self._secret,
                },
            )
        else:
            answer = self._stable_token(force_refresh=force_refresh)
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise errors.error_for(
                "malformed_answer", "no access_token in the answer", step="token"
            )
        self._mask_once(token)
        expires_in = answer.get("expires_in", 7200)
        if not isinstance(expires_in, int) or isinstance(expires_in, bool):
            # A token service may send anything; the cache clamps the range of an integer.
            raise errors.error_for(
                "malformed_answer", "expires_in is not an integer number of seconds", step="token"
            )
        return token, expires_in

    def _stable_token(self, *, force_refresh: bool) -> dict[str, Any]:
        return self._send(
            "token",
            "POST",
            "/cgi-bin/stable_token",
            json_body={
                "grant_type": "client_credential",
                "appid": self._appid,
                "secret": self._secret,
                "force_refresh": force_refresh,
            },
        )

    # -- the remote calls ---------------------------------------------------------------------

    def upload_pdf(self, pdf: bytes, filename: str = "bill.pdf") -> str:
        """setpdf: upload a bill's PDF; returns its `s_media_id` (valid for 3 days)."""
        answer = self._call(
            "upload",
            "/card/invoice/platform/setpdf",
            files={"pdf": (filename, pdf, "application/pdf")},
        )
        media_id = answer.get("s_media_id")
        if media_id is None or str(media_id) == "":
            raise errors.error_for("malformed_answer", "no s_media_id in the answer", step="upload")
        return str(media_id)  # a 64-bit integer: kept as a string, never as a float

    def insert_bill(self, order: Order, s_pdf_media_id: str) -> InsertedBill:
        """nontax/insertbill: put the bill into the payer's card package."""
        answer = self._call(
            "insert", "/nontax/insertbill", json_body=insertbill_body(order, s_pdf_media_id)
        )
        code, openid = answer.get("code"), answer.get("openid")
        if not code or not openid:
            raise errors.error_for(
                "malformed_answer", "no code/openid in the answer", step="insert"
            )
        return InsertedBill(str(code), str(openid))

    def get_auth_data(self, order_id: str, s_pappid: str | None = None) -> AuthData:
        """getauthdata: where the payer's authorization of this order stands."""
        answer = self._call(
            "authorization",
            "/card/invoice/getauthdata",
            json_body={"order_id": order_id, "s_pappid": s_pappid or self.s_pappid},
        )
        return AuthData(str(answer.get("invoice_status", "")), answer.get("auth_time"))

    def reject_insert(self, order_id: str, reason: str, url: str | None = None) -> None:
        """rejectinsert: refuse the order for good; the payer is shown `reason` (and `url`).

        Checked first (`validation.check_refusal`: a reason not blank, at most
        MAX_REFUSAL_REASON_CHARS): `errors.InvalidRequestError` without a call. Afterwards
        insertbill answers 72035 for this order_id; so does a second refusal, which the step
        `refuse` classifies as `Action.ALREADY_DONE` (`errors.AlreadyDoneError`).
        """
        problems = validation.check_refusal(order_id, reason, url)
        if problems:
            raise errors.InvalidRequestError(problems)
        body = {"s_pappid": self.s_pappid, "order_id": order_id, "reason": reason}
        if url is not None:
            body["url"] = url
        self._call(Step.REFUSE, "/card/invoice/rejectinsert", json_body=body)

    def update_status(self, card_id: str, code: str, status: str) -> None:
        """platform/updatestatus: set an inserted bill's reimburse status (`status` by its full
        or short name: INIT, LOCK, CLOSURE, CANCEL). CANCEL voids the bill (step `void`: a
        72060 then means it was voided already, `errors.AlreadyDoneError`); the others are step
        `status`. A bad argument is `errors.InvalidRequestError` without a call.
        """
        problems = validation.check_status_change(card_id, code, status)
        if problems:
            raise errors.InvalidRequestError(problems)
        wanted = validation.reimburse_status(status)
        step = Step.VOID if wanted == validation.REIMBURSE_STATUSES["CANCEL"] else Step.STATUS
        body = {"card_id": card_id, "code": code, "reimburse_status": wanted}
        self._call(step, "/card/invoice/platform/updatestatus", json_body=body)

    def _call(self, step: str, path: str, *, method: str = "POST", **kwargs: Any) -> dict[str, Any]:
        """A call with the access token; on a refused token: invalidate-if-same, refresh,
        retry once."""
        token = self.get_access_token()
        try:
            return self._send(step, method, path, token=token, **kwargs)
        except errors.TokenInvalidError:
            token = self.token_cache.invalidate(token, self.fetch_access_token)
            self._mask_once(token)
        try:
            return self._send(step, method, path, token=token, **kwargs)
        except errors.TokenInvalidError as again:
            # Refused right after a refresh: a token problem, not this order's. Step "token"
            # stops the batch and leaves its orders due instead of failing each of them.
            raise errors.error_for(
                again.signal,
                f"a fresh access token was refused too ({again.errmsg or 'no errmsg'})",
                step="token",
            ) from None

    def _send(self, step: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        with metrics.wechat_call(step):
            return self._exchange(step, method, path, **kwargs)

    def _exchange(
        self,
        step: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        files: Any = None,
        absolute: bool = False,
        secrets: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        session = self.session
        url = path if absolute else self.url_from_endpoint(path)
        query = dict(params or {})
        if token is not None:
            query["access_token"] = token
        body, headers = None, {}
        if json_body is not None:
            # WeChat reads UTF-8 JSON; ensure_ascii=False keeps Chinese titles as they are.
            body = json.dumps(json_body, ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json; charset=utf-8"}
        secrets = (token, self._secret, *secrets)
        try:
            prepared = prepared_request(session, method, url, query, body, headers, files)
            # Never a redirect: it would re-send the app secret (a stable_token body) or the
            # token (the query string) to wherever the answer points.
            response = session.send(
                prepared,
                timeout=self.merged_extra.get("timeout"),
                allow_redirects=False,
                **self._settings_for(session, prepared.url),
            )
        except requests.Timeout as exc:
            raise errors.error_for(
                "timeout", errors.redact(describe(exc), *secrets), step=step
            ) from None
        except requests.RequestException as exc:
            raise errors.error_for(
                "connection_error", errors.redact(describe(exc), *secrets), step=step
            ) from None
        return read_answer(response, step=step, secrets=secrets)

    def _settings_for(self, session: requests.Session, url: str) -> dict[str, Any]:
        """Proxies, TLS verification and client certificate for a call, as HttpHook's
        `run_and_check` merges them from the session and the environment, but once per host:
        requests would read the environment's proxy and CA-bundle variables at every call, a
        measurable share of a batch's CPU (`bench/batch_cpu.py`)."""
        host = urlsplit(url)[:2]
        settings = self._send_settings.get(host)
        if settings is None:
            settings = self._send_settings[host] = session.merge_environment_settings(
                url, proxies=dict(session.proxies), stream=session.stream, verify=session.verify,
                cert=session.cert,
            )  # fmt: skip
        return settings

    def test_connection(self) -> tuple[bool, str]:
        try:
            self.fetch_access_token()
        except errors.WeChatError as exc:
            return False, str(exc)
        return True, "a token was issued"


errors.scrub_url_logs()  # urllib3 logs each request line, query string included


def _mask(token: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(token)


def _orders_db_token_cache(appid: str, source: str, margin_s: int, **kinds: Any) -> TokenCache:
    from wechat_nontax.store.connection import connect

    return TokenCache(
        lambda: connect(application_name="nontax-token"),
        appid=appid,
        source=source,
        margin_s=margin_s,
        **kinds,
    )
