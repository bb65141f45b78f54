"""The sandbox's WeChat endpoints and admin API, over HTTP against the running process."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from wechat_sandbox.client import (
    DEFAULT_APPID,
    DEFAULT_CARD_ID,
    SandboxAdmin,
    SandboxAdminError,
    SandboxWeChat,
    insertbill_body,
)

PDF = b"%PDF-1.4\n% sandbox test bill\n%%EOF\n"


def upload(wx: SandboxWeChat, token: str) -> str:
    answer = wx.setpdf(token, PDF)
    assert answer["errcode"] == 0, answer
    return answer["s_media_id"]


def errcode_of(answer: dict) -> int:
    return answer.get("errcode", 0)


# ---------------------------------------------------------------- tokens
def test_stable_token_is_stable_until_force_refresh(wx: SandboxWeChat) -> None:
    first = wx.stable_token()
    assert first["expires_in"] == 7200
    assert len(first["access_token"]) > 100
    assert wx.stable_token()["access_token"] == first["access_token"]

    refreshed = wx.stable_token(force_refresh=True)
    assert refreshed["access_token"] != first["access_token"]
    assert errcode_of(wx.getauthdata(first["access_token"], "o-1")) == 40001
    assert errcode_of(wx.getauthdata(refreshed["access_token"], "o-1")) == 0
    assert wx.stable_token()["access_token"] == refreshed["access_token"]


@pytest.mark.parametrize(
    ("overrides", "errcode"),
    [
        ({"appid": "wx0000000000000000"}, 40013),
        ({"secret": "wrong"}, 40125),
        ({"grant_type": "password"}, 40002),
        ({"appid": None}, 41002),
        ({"secret": ""}, 41004),
        ({"force_refresh": "yes"}, 47001),
    ],
)
def test_stable_token_refuses_bad_credentials(
    wx: SandboxWeChat, overrides: dict, errcode: int
) -> None:
    answer = wx.stable_token(**overrides)
    assert answer["errcode"] == errcode
    assert "access_token" not in answer


def test_classic_token_overlap_then_invalid(sandbox: SandboxAdmin, wx: SandboxWeChat) -> None:
    sandbox.configure(classic_overlap_s=3.0)  # room for two round trips on a loaded machine
    stable = wx.access_token()
    old = wx.classic_token()["access_token"]
    new = wx.classic_token()
    assert new["expires_in"] == 7200
    assert new["access_token"] != old
    assert errcode_of(wx.getauthdata(old, "o-1")) == 0  # still inside the overlap
    time.sleep(3.1)
    assert errcode_of(wx.getauthdata(old, "o-1")) == 40001
    assert errcode_of(wx.getauthdata(new["access_token"], "o-1")) == 0
    assert errcode_of(wx.getauthdata(stable, "o-1")) == 0  # classic fetches leave stable alone
    assert errcode_of(wx.classic_token(secret="nope")) == 40125
    assert errcode_of(wx.classic_token(grant_type="x")) == 40002
    kinds = sorted(t["kind"] for t in sandbox.tokens())
    assert kinds == ["classic", "classic", "stable"]


def test_token_ttl_expiry(sandbox: SandboxAdmin, wx: SandboxWeChat) -> None:
    sandbox.configure(token_ttl_s=0.3)
    answer = wx.stable_token()
    assert answer["expires_in"] == 1
    time.sleep(0.4)
    assert errcode_of(wx.getauthdata(answer["access_token"], "o-1")) == 42001
    renewed = wx.stable_token()["access_token"]
    assert renewed != answer["access_token"]


def test_admin_expires_every_token(sandbox: SandboxAdmin, wx: SandboxWeChat) -> None:
    stable, classic = wx.access_token(), wx.classic_token()["access_token"]
    assert sandbox.expire_tokens() == 2
    for tok in (stable, classic):
        assert errcode_of(wx.getauthdata(tok, "o-1")) == 42001
    assert not any(t["valid"] for t in sandbox.tokens())


@pytest.mark.parametrize("endpoint", ["insertbill", "setpdf", "getauthdata", "getpdf"])
def test_missing_and_unknown_token(wx: SandboxWeChat, endpoint: str) -> None:
    def call(tok: str | None) -> dict:
        if endpoint == "setpdf":
            return wx.setpdf(tok, PDF)
        if endpoint == "getauthdata":
            return wx.getauthdata(tok, "o-1")
        if endpoint == "getpdf":
            return wx.getpdf(tok, "1")
        return wx.insertbill(tok, insertbill_body("o-1", "1"))

    assert call(None)["errcode"] == 41001
    assert call("")["errcode"] == 41001
    assert call("not-a-token")["errcode"] == 40001


# ---------------------------------------------------------------- setpdf
def test_setpdf_returns_64_bit_media_id(sandbox: SandboxAdmin, wx: SandboxWeChat, token) -> None:
    answer = wx.setpdf(token, PDF)
    assert answer["errcode"] == 0 and answer["errmsg"] == "ok"
    media_id = answer["s_media_id"]
    assert isinstance(media_id, str) and media_id.isdigit() and 0 < int(media_id) < 2**63
    [media] = sandbox.media()
    assert media["s_media_id"] == media_id and media["size"] == len(PDF)
    link = wx.getpdf(token, media_id)
    assert link["errcode"] == 0 and link["pdf_url_expire_time"] == 7200
    assert requests.get(link["pdf_url"], timeout=5).content == PDF


@pytest.mark.parametrize(
    ("field", "data", "errcode"),
    [
        ("media", PDF, 47001),  # the file field must be named pdf
        ("file", PDF, 47001),
        ("pdf", b"<html>not a pdf</html>", 72040),
        ("pdf", b"", 72040),
        ("pdf", b"%PDF", 72040),
    ],
)
def test_setpdf_refusals(wx: SandboxWeChat, token: str, field: str, data: bytes, errcode) -> None:
    assert wx.setpdf(token, data, field=field)["errcode"] == errcode


def test_setpdf_needs_multipart(wx: SandboxWeChat, token: str) -> None:
    params = {"access_token": token}
    path = "/card/invoice/platform/setpdf"
    assert wx.request("POST", path, params=params, json={"pdf": "x"}).json()["errcode"] == 47001
    text_field = wx.request("POST", path, params=params, files={"pdf": (None, "%PDF-1.4")})
    assert text_field.json()["errcode"] == 47001


def test_media_expires(sandbox: SandboxAdmin, wx: SandboxWeChat, token: str) -> None:
    sandbox.configure(media_ttl_s=0.3)
    media_id = upload(wx, token)
    time.sleep(0.4)
    assert wx.insertbill(token, insertbill_body("o-exp", media_id))["errcode"] == 40007
    sandbox.configure(media_ttl_s=3600)
    fresh = upload(wx, token)
    assert sandbox.expire_media() == 1
    assert wx.insertbill(token, insertbill_body("o-exp", fresh))["errcode"] == 40007


# ---------------------------------------------------------------- insertbill
def test_insertbill_success_is_recorded(sandbox: SandboxAdmin, wx: SandboxWeChat, token) -> None:
    media_id = upload(wx, token)
    body = insertbill_body("order-1", media_id, fee=4250, billing_no="0012", billing_code="3301")
    answer = wx.insertbill(token, body)
    assert answer["errcode"] == 0 and answer["errmsg"] == "ok"
    assert len(answer["code"]) == 13 and answer["code"].isdigit()
    assert answer["openid"].startswith("o") and len(answer["openid"]) == 28

    [bill] = sandbox.bills()
    assert bill["order_id"] == "order-1" and bill["card_id"] == DEFAULT_CARD_ID
    assert bill["appid"] == DEFAULT_APPID and bill["fee"] == 4250
    assert (bill["billing_no"], bill["billing_code"]) == ("0012", "3301")
    assert bill["s_pdf_media_id"] == media_id and bill["title"] == "沙箱测试缴款单位"
    assert (bill["code"], bill["openid"]) == (answer["code"], answer["openid"])
    assert bill["billing_time"] == 1_700_000_000 and bill["inserted_at"] > 0
    order = sandbox.orders()["order-1"]
    assert order["attempts"] == 1 and order["successes"] == 1 and order["last_errcode"] == 0
    assert sandbox.bill("order-1")["bill"]["code"] == answer["code"]
    assert sandbox.state()["bills"] == 1


def _set(body: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return body


DATA = "card_ext.user_card.invoice_user_data"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (f"{DATA}.fee", "123"),
        (f"{DATA}.fee", True),
        (f"{DATA}.fee", 1.5),
        (f"{DATA}.fee", -1),
        (f"{DATA}.billing_time", "1511169724"),  # the document's example sends a string
        (f"{DATA}.billing_time", False),
        (f"{DATA}.title", 5),
        (f"{DATA}.billing_no", KeyError),
        (f"{DATA}.billing_code", ""),
        (f"{DATA}.s_pdf_media_id", 123),
        ("card_ext.user_card.invoice_user_data", KeyError),
        ("card_ext.user_card", "{}"),
        ("card_ext", '{"user_card": {}}'),
        ("order_id", 1511169724),
        ("order_id", KeyError),
        ("card_id", None),
        ("appid", KeyError),
    ],
)
def test_insertbill_shape_errors(wx: SandboxWeChat, token: str, path: str, value) -> None:
    body = _set(insertbill_body("o-shape", upload(wx, token)), path, value)
    assert wx.insertbill(token, body)["errcode"] == 47001


def test_insertbill_table_form_is_refused(wx: SandboxWeChat, token: str) -> None:
    """The parameter table's flat user_card form is not what the sandbox (nor SKIT) uses."""
    body = insertbill_body("o-flat", upload(wx, token))
    fields = body["card_ext"]["user_card"].pop("invoice_user_data")
    body["card_ext"]["user_card"].update(fields)
    assert wx.insertbill(token, body)["errcode"] == 47001


def test_insertbill_checks_token_before_shape(wx: SandboxWeChat) -> None:
    assert wx.insertbill("bogus", {"not": "a bill"})["errcode"] == 40001
    assert wx.insertbill(None, "garbage")["errcode"] == 41001


def test_insertbill_business_errors(sandbox: SandboxAdmin, wx: SandboxWeChat, token: str) -> None:
    media_id = upload(wx, token)

    def insert(order_id: str, **kwargs) -> int:
        return wx.insertbill(token, insertbill_body(order_id, media_id, **kwargs))["errcode"]

    assert insert("o-appid", appid="wx1111111111111111") == 40013
    assert insert("o-card", card_id="pUnknownCardId") == 40078
    sandbox.set_authorization("o-unauth", "unauthorized")
    assert insert("o-unauth") == 72038
    sandbox.set_authorization("o-rejected", "rejected")
    assert insert("o-rejected") == 72035
    assert wx.insertbill(token, insertbill_body("o-media", "424242"))["errcode"] == 40007

    assert insert("o-ok", billing_no="N1", billing_code="C1") == 0
    assert insert("o-ok", billing_no="N1", billing_code="C1") == 72056
    assert insert("o-ok", billing_no="N2", billing_code="C2") == 72056
    assert insert("o-other", billing_no="N1", billing_code="C1") == 72042
    assert insert("o-other", billing_no="N1", billing_code="C9") == 0

    sandbox.set_authorization("o-unauth", "authorized")
    assert insert("o-unauth") == 0
    orders = sandbox.orders()
    assert orders["o-ok"]["attempts"] == 3 and orders["o-ok"]["successes"] == 1
    assert orders["o-ok"]["repeats"] == 2
    assert [b["order_id"] for b in sandbox.bills()] == ["o-ok", "o-other", "o-unauth"]
    assert sandbox.state()["orders"]["inserted_more_than_once"] == []


def test_insertbill_card_ids_and_apps_are_configurable(
    sandbox: SandboxAdmin, wx: SandboxWeChat
) -> None:
    sandbox.configure(card_ids=["pCardA", "pCardB"], apps={"wx2222222222222222": "s2"})
    other = SandboxWeChat(sandbox.base_url, appid="wx2222222222222222", secret="s2")
    assert wx.stable_token()["errcode"] == 40013  # the default app is gone
    tok = other.access_token()
    media_id = upload(other, tok)
    body = insertbill_body("o-cfg", media_id, card_id="pCardB", appid="wx2222222222222222")
    assert other.insertbill(tok, body)["errcode"] == 0
    assert other.insertbill(tok, insertbill_body("o-cfg2", media_id))["errcode"] == 40013
    sandbox.reset()  # back to the initial configuration
    assert sandbox.config()["card_ids"] == [DEFAULT_CARD_ID]
    assert wx.stable_token()["expires_in"] == 7200
    other.close()


def test_authorize_by_default_off(sandbox: SandboxAdmin, wx: SandboxWeChat, token: str) -> None:
    sandbox.configure(authorize_by_default=False)
    media_id = upload(wx, token)
    assert wx.insertbill(token, insertbill_body("o-x", media_id))["errcode"] == 72038
    sandbox.set_authorizations({"o-x": "authorized"})
    assert wx.insertbill(token, insertbill_body("o-x", media_id))["errcode"] == 0


def test_concurrent_inserts_of_one_order_record_one_bill(
    sandbox: SandboxAdmin, wx: SandboxWeChat, token: str
) -> None:
    body = insertbill_body("o-race", upload(wx, token))
    url = f"{sandbox.base_url}/nontax/insertbill"

    def send(_: int) -> int:
        answer = requests.post(url, params={"access_token": token}, json=body, timeout=10)
        return answer.json()["errcode"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(send, range(32)))
    assert sorted(set(codes)) == [0, 72056] and codes.count(0) == 1
    assert len(sandbox.bills()) == 1
    assert sandbox.orders()["o-race"]["attempts"] == 32


# ---------------------------------------------------------------- getauthdata
def test_getauthdata_statuses(sandbox: SandboxAdmin, wx: SandboxWeChat, token: str) -> None:
    sandbox.set_authorization("o-b", "unauthorized")
    sandbox.set_authorization("o-c", "rejected")
    expected = {"o-a": "auth success", "o-b": "never auth", "o-c": "reject insert"}
    for order_id, status in expected.items():
        answer = wx.getauthdata(token, order_id, s_pappid="W0VGX0hBTkRMRV9JRA==")
        assert answer["errcode"] == 0 and answer["invoice_status"] == status
        assert isinstance(answer["auth_time"], int)
        # Never authorised: no time to give; else when the authorisation was recorded.
        assert (answer["auth_time"] == 0) if order_id == "o-b" else answer["auth_time"] > 1.6e9
    path = "/card/invoice/getauthdata"
    for bad in ({"order_id": "o-a"}, {"order_id": 5, "s_pappid": "x"}, [], "o-a"):
        answer = wx.request("POST", path, params={"access_token": token}, json=bad).json()
        assert answer["errcode"] == 47001


# ---------------------------------------------------------------- admin API
def test_calls_count_every_call_including_errors(sandbox: SandboxAdmin, wx: SandboxWeChat):
    token = wx.access_token()
    wx.stable_token(secret="bad")
    wx.classic_token()
    wx.setpdf(None, PDF)
    wx.insertbill(token, "garbage")
    wx.insertbill(token, {})
    wx.getauthdata(token, "o-1")
    calls = sandbox.calls()
    assert calls["stable_token"] == 2 and calls["token"] == 1 and calls["setpdf"] == 1
    assert calls["insertbill"] == 2 and calls["getauthdata"] == 1
    state = sandbox.state()
    assert state["calls"] == calls and state["total_calls"] == 7
    assert len(state["tokens"]) == 2 and state["faults"] == []
    sandbox.reset()
    assert set(sandbox.calls().values()) == {0}
    assert sandbox.tokens() == [] and sandbox.bills() == []


def test_admin_refuses_bad_requests(sandbox: SandboxAdmin) -> None:
    with pytest.raises(SandboxAdminError, match="unknown setting"):
        sandbox.configure(nonsense=1)
    with pytest.raises(SandboxAdminError, match="token_ttl_s"):
        sandbox.configure(token_ttl_s=-5)
    with pytest.raises(SandboxAdminError, match="status"):
        sandbox.set_authorization("o-1", "maybe")
    with pytest.raises(SandboxAdminError, match="kind"):
        sandbox.add_fault(endpoint="insertbill", kind="explode")
    with pytest.raises(SandboxAdminError, match="endpoint"):
        sandbox.add_fault(endpoint="nowhere", kind="latency")
    with pytest.raises(SandboxAdminError, match="probability"):
        sandbox.add_fault(kind="latency", probability=2)
    with pytest.raises(SandboxAdminError) as err:
        sandbox.remove_fault(999)
    assert err.value.status == 404
    assert sandbox.config()["token_ttl_s"] == 7200


# ---------------------------------------------------------------- bad input is never a 500
WECHAT_POSTS = [
    "/cgi-bin/stable_token",
    "/nontax/insertbill",
    "/card/invoice/getauthdata",
    "/card/invoice/platform/getpdf",
    "/card/invoice/platform/setpdf",
    "/card/invoice/rejectinsert",
    "/card/invoice/platform/updatestatus",
]
GARBAGE = [
    b"",
    b"{",
    b"null",
    b"[1, 2]",
    b'"text"',
    b"\xff\xfe\x00garbage",
    b"[" * 50_000,
    b'{"order_id": {"$ne": 1}, "card_ext": [[[]]]}',
]


@pytest.mark.parametrize("path", WECHAT_POSTS)
@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=x"])
def test_garbage_never_gives_500(wx: SandboxWeChat, token: str, path: str, content_type) -> None:
    for body in GARBAGE:
        response = wx.request(
            "POST",
            path,
            params={"access_token": token},
            data=body,
            headers={"Content-Type": content_type},
        )
        assert response.status_code == 200, (body[:20], response.text)
        # A JSON object without grant_type is well-formed for stable_token, just wrong.
        wellformed = body.startswith(b'{"') and path.endswith("stable_token")
        expected = 40002 if wellformed else 47001
        assert response.json()["errcode"] == expected, (body[:20], response.text)


def test_unknown_routes_and_methods_answer_json(wx: SandboxWeChat) -> None:
    missing = wx.request("GET", "/cgi-bin/nothing")
    assert missing.status_code == 404 and missing.json()["errcode"] == 404
    wrong_method = wx.request("GET", "/nontax/insertbill")
    assert wrong_method.status_code == 405 and "errcode" in wrong_method.json()
    token_without_params = wx.request("GET", "/cgi-bin/token")
    assert token_without_params.status_code == 200
    assert token_without_params.json()["errcode"] == 40002


def test_an_unexpected_exception_becomes_errcode_minus_1(monkeypatch) -> None:
    """In process: a bug in a handler answers errcode -1, never a 500."""
    import asyncio

    import httpx

    from wechat_sandbox.app import create_app
    from wechat_sandbox.config import Settings

    app = create_app(Settings(admin_token="t0ken"))

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = {"X-Sandbox-Admin-Token": "t0ken"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://sandbox", headers=headers
        ) as client:
            body = {"grant_type": "client_credential", "appid": DEFAULT_APPID, "secret": "x"}
            answer = await client.post("/cgi-bin/stable_token", json=body)
            assert answer.json()["errcode"] == 40125
            monkeypatch.setattr(app.state.sandbox, "stable_token", boom)
            monkeypatch.setattr(app.state.sandbox, "summary", boom)
            broken = await client.post("/cgi-bin/stable_token", json=body)
            assert broken.status_code == 200 and broken.json()["errcode"] == -1
            admin = await client.get("/_sandbox/state")
            assert admin.status_code == 200 and admin.json()["errcode"] == -1
            assert (await client.get("/_sandbox/calls")).json()["stable_token"] == 2

    asyncio.run(scenario())


def test_the_call_log_keeps_each_call_with_its_time_order_and_answer(
    sandbox: SandboxAdmin, wx: SandboxWeChat, token: str
) -> None:
    sandbox.set_authorization("o-late", "unauthorized")
    before = time.time()
    wx.getauthdata(token, "o-late")
    sandbox.add_fault(endpoint="getauthdata", kind="http_5xx", count=1)
    with pytest.raises(requests.JSONDecodeError):  # an HTML page, not JSON
        wx.getauthdata(token, "o-late")
    log = sandbox.call_log(since=before)
    assert [(c["endpoint"], c["order_id"], c["errcode"]) for c in log] == [
        ("getauthdata", "o-late", 0),
        ("getauthdata", "o-late", None),  # no JSON answer
    ]
    assert log[0]["invoice_status"] == "never auth"
    assert before <= log[0]["at"] <= log[1]["at"] <= time.time()
    assert len(sandbox.call_log()) > len(log)  # the token fetch came before
    sandbox.reset()
    assert sandbox.call_log() == []
    with pytest.raises(SandboxAdminError, match="since"):
        sandbox._call("GET", "calls/log?since=yesterday")
