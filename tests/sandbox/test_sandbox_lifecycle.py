"""After the insert, over HTTP: rejectinsert, platform/updatestatus, getauthdata driven by the
admin API, the daily insert limit, and faults on the new endpoints."""

from __future__ import annotations

import pytest
import requests

from wechat_sandbox import errors as E
from wechat_sandbox.bills import (
    MAX_REJECT_REASON_CHARS,
    REIMBURSE_CANCEL,
    REIMBURSE_CLOSURE,
    REIMBURSE_INIT,
    REIMBURSE_LOCK,
)
from wechat_sandbox.client import (
    DEFAULT_APPID,
    DEFAULT_CARD_ID,
    DEFAULT_SECRET,
    SandboxAdmin,
    SandboxAdminError,
    SandboxWeChat,
    insertbill_body,
)
from wechat_sandbox.config import Settings
from wechat_sandbox.state import SandboxState

PDF = b"%PDF-1.4\n% lifecycle tests\n%%EOF\n"


def insert(wx: SandboxWeChat, token: str, order_id: str) -> dict:
    """An inserted bill: the answer with its code."""
    media_id = wx.setpdf(token, PDF)["s_media_id"]
    answer = wx.insertbill(token, insertbill_body(order_id, media_id))
    assert answer["errcode"] == 0, answer
    return answer


def insert_errcode(wx: SandboxWeChat, token: str, order_id: str) -> int:
    media_id = wx.setpdf(token, PDF)["s_media_id"]
    return wx.insertbill(token, insertbill_body(order_id, media_id))["errcode"]


def status_of(sandbox: SandboxAdmin, order_id: str) -> str:
    return sandbox.statuses()[order_id]["reimburse_status"]


# ---------------------------------------------------------------- rejectinsert
def test_a_refused_order_can_never_be_inserted(sandbox, wx, token) -> None:
    answer = wx.rejectinsert(token, "o-ref", "已退款", s_pappid="PAPPID==", url="https://u.example")
    assert answer == {"errcode": 0, "errmsg": "ok"}
    assert insert_errcode(wx, token, "o-ref") == 72035
    sandbox.set_authorization("o-ref", "authorized")  # not even a new authorisation undoes it
    assert insert_errcode(wx, token, "o-ref") == 72035
    assert wx.getauthdata(token, "o-ref")["invoice_status"] == "reject insert"
    assert sandbox.bills() == []
    [rejection] = sandbox.rejections().values()
    assert rejection["order_id"] == "o-ref" and rejection["appid"] == DEFAULT_APPID
    assert (rejection["s_pappid"], rejection["reason"], rejection["url"]) == (
        "PAPPID==", "已退款", "https://u.example"
    )  # fmt: skip
    assert rejection["repeats"] == 0
    assert sandbox.state()["rejections"] == 1


def test_a_second_refusal_answers_72035_and_changes_nothing(sandbox, wx, token) -> None:
    assert wx.rejectinsert(token, "o-twice", "first reason")["errcode"] == 0
    assert wx.rejectinsert(token, "o-twice", "second reason")["errcode"] == 72035
    rejection = sandbox.rejections()["o-twice"]
    assert rejection["reason"] == "first reason" and rejection["repeats"] == 1
    answers = sandbox.order_answers("o-twice")["rejectinsert"]
    assert answers == {"0": 1, "72035": 1}


def test_refusing_an_order_that_has_a_bill_answers_72056(sandbox, wx, token) -> None:
    bill = insert(wx, token, "o-billed")
    assert wx.rejectinsert(token, "o-billed", "too late")["errcode"] == 72056
    assert sandbox.rejections() == {}
    assert sandbox.bill("o-billed")["bill"]["code"] == bill["code"]  # the bill stays
    assert wx.getauthdata(token, "o-billed")["invoice_status"] == "auth success"


def test_refusing_an_order_never_authorised_answers_72038_until_it_is(sandbox, wx, token) -> None:
    sandbox.set_authorization("o-late", "unauthorized")
    assert wx.rejectinsert(token, "o-late", "refunded")["errcode"] == 72038
    sandbox.set_authorization("o-late", "authorized")
    assert wx.rejectinsert(token, "o-late", "refunded")["errcode"] == 0
    sandbox.set_authorization("o-payer-refused", "rejected")
    assert wx.rejectinsert(token, "o-payer-refused", "refunded")["errcode"] == 72035
    assert list(sandbox.rejections()) == ["o-late"]


@pytest.mark.parametrize(
    "body",
    [
        {"order_id": "o-1", "reason": "r"},  # no s_pappid
        {"s_pappid": "p", "reason": "r"},  # no order_id
        {"s_pappid": "p", "order_id": "o-1"},  # no reason
        {"s_pappid": "p", "order_id": "o-1", "reason": ""},
        {"s_pappid": "p", "order_id": "o-1", "reason": 5},
        {"s_pappid": "p", "order_id": "o-1", "reason": "理" * (MAX_REJECT_REASON_CHARS + 1)},
        {"s_pappid": "p", "order_id": "o-1", "reason": "r", "url": 7},
        ["o-1"],
    ],
)
def test_a_malformed_refusal_answers_47001(sandbox, wx, token, body) -> None:
    path = "/card/invoice/rejectinsert"
    answer = wx.request("POST", path, params={"access_token": token}, json=body).json()
    assert answer["errcode"] == 47001
    assert sandbox.rejections() == {}


def test_the_longest_reason_is_accepted_and_a_token_is_needed(sandbox, wx, token) -> None:
    assert wx.rejectinsert(None, "o-1", "r")["errcode"] == 41001
    assert wx.rejectinsert("not-a-token", "o-1", "r")["errcode"] == 40001
    reason = "理" * MAX_REJECT_REASON_CHARS
    assert wx.rejectinsert(token, "o-1", reason)["errcode"] == 0
    assert sandbox.rejections()["o-1"]["reason"] == reason
    assert sandbox.calls()["rejectinsert"] == 3


# ---------------------------------------------------------------- platform/updatestatus
def test_a_bill_starts_init_and_moves_between_init_and_lock(sandbox, wx, token) -> None:
    code = insert(wx, token, "o-st")["code"]
    assert status_of(sandbox, "o-st") == REIMBURSE_INIT
    for wanted in (REIMBURSE_LOCK, REIMBURSE_INIT, REIMBURSE_INIT, REIMBURSE_LOCK):
        assert wx.updatestatus(token, DEFAULT_CARD_ID, code, wanted)["errcode"] == 0
        assert status_of(sandbox, "o-st") == wanted
    record = sandbox.statuses()["o-st"]
    assert (record["card_id"], record["code"]) == (DEFAULT_CARD_ID, code)
    assert [(h["from"], h["to"]) for h in record["history"]] == [
        (REIMBURSE_INIT, REIMBURSE_LOCK),
        (REIMBURSE_LOCK, REIMBURSE_INIT),
        (REIMBURSE_INIT, REIMBURSE_INIT),
        (REIMBURSE_INIT, REIMBURSE_LOCK),
    ]


@pytest.mark.parametrize(
    ("path", "errcode"),
    [
        ((REIMBURSE_CANCEL,), 72060),
        ((REIMBURSE_LOCK, REIMBURSE_CANCEL), 72060),
        ((REIMBURSE_CLOSURE,), 72061),
        ((REIMBURSE_LOCK, REIMBURSE_CLOSURE), 72061),
    ],
    ids=["init-cancel", "lock-cancel", "init-closure", "lock-closure"],
)
def test_a_cancelled_or_closed_bill_answers_its_errcode_to_everything(
    sandbox, wx, token, path, errcode
) -> None:
    code = insert(wx, token, "o-final")["code"]
    for wanted in path:
        assert wx.updatestatus(token, DEFAULT_CARD_ID, code, wanted)["errcode"] == 0
    for wanted in (REIMBURSE_CANCEL, REIMBURSE_INIT, REIMBURSE_LOCK, REIMBURSE_CLOSURE):
        assert wx.updatestatus(token, DEFAULT_CARD_ID, code, wanted)["errcode"] == errcode
    assert status_of(sandbox, "o-final") == path[-1]
    assert sandbox.state()["reimburse_statuses"] == {path[-1]: 1}
    answers = sandbox.order_answers("o-final")["updatestatus"]
    assert answers == {"0": len(path), str(errcode): 4}
    assert insert_errcode(wx, token, "o-final") == 72056  # still the order's one bill


def test_updatestatus_refuses_unknown_bills_and_statuses(sandbox, wx, token) -> None:
    code = insert(wx, token, "o-x")["code"]
    assert wx.updatestatus(token, DEFAULT_CARD_ID, "1234567890123", REIMBURSE_CANCEL)[
        "errcode"
    ] == 40056  # fmt: skip
    assert wx.updatestatus(token, "pOtherCard", code, REIMBURSE_CANCEL)["errcode"] == 40056
    for wanted in ("INVOICE_REIMBURSE_RELEASE", "CANCEL", "", None):
        assert wx.updatestatus(token, DEFAULT_CARD_ID, code, wanted)["errcode"] == 47001
    path = "/card/invoice/platform/updatestatus"
    for bad in ({"code": code, "reimburse_status": REIMBURSE_CANCEL}, {"card_id": DEFAULT_CARD_ID}):
        answer = wx.request("POST", path, params={"access_token": token}, json=bad).json()
        assert answer["errcode"] == 47001
    assert wx.updatestatus(None, DEFAULT_CARD_ID, code, REIMBURSE_CANCEL)["errcode"] == 41001
    assert status_of(sandbox, "o-x") == REIMBURSE_INIT


def test_another_apps_bill_is_not_found(sandbox, wx, token) -> None:
    code = insert(wx, token, "o-mine")["code"]
    sandbox.configure(apps={DEFAULT_APPID: DEFAULT_SECRET, "wx1111111111111111": "other"})
    other = SandboxWeChat(sandbox.url, appid="wx1111111111111111", secret="other")
    try:
        assert other.updatestatus(other.access_token(), DEFAULT_CARD_ID, code, REIMBURSE_CANCEL)[
            "errcode"
        ] == 40056  # fmt: skip
    finally:
        other.close()
    assert status_of(sandbox, "o-mine") == REIMBURSE_INIT


def test_the_admin_sets_a_status_as_a_reimbursing_party_would(sandbox, wx, token) -> None:
    code = insert(wx, token, "o-reimbursed")["code"]
    assert sandbox.set_bill_status("o-reimbursed", REIMBURSE_CLOSURE)["errcode"] == 0
    assert wx.updatestatus(token, DEFAULT_CARD_ID, code, REIMBURSE_CANCEL)["errcode"] == 72061
    again = sandbox.set_bill_status("o-reimbursed", REIMBURSE_INIT)  # WeChat's rules hold
    assert again["errcode"] == 72061 and again["status"]["reimburse_status"] == REIMBURSE_CLOSURE
    assert sandbox.statuses()["o-reimbursed"]["history"][0]["by"] == "admin"
    with pytest.raises(SandboxAdminError) as missing:
        sandbox.set_bill_status("o-none", REIMBURSE_LOCK)
    assert missing.value.status == 404
    with pytest.raises(SandboxAdminError, match="reimburse_status"):
        sandbox.set_bill_status("o-reimbursed", "LOCK")


# ---------------------------------------------------------------- getauthdata and the admin API
def test_getauthdata_follows_the_admin_api(sandbox, wx, token) -> None:
    def status(order_id: str) -> str:
        answer = wx.getauthdata(token, order_id)
        assert answer["errcode"] == 0
        return answer["invoice_status"]

    assert status("o-a") == "auth success"  # authorised by default
    sandbox.set_authorization("o-a", "unauthorized")
    assert status("o-a") == "never auth"
    assert insert_errcode(wx, token, "o-a") == 72038
    sandbox.set_authorization("o-a", "authorized")  # the payer authorises later
    assert status("o-a") == "auth success"
    sandbox.set_authorization("o-b", "rejected")
    assert status("o-b") == "reject insert"
    sandbox.configure(authorize_by_default=False)
    assert status("o-c") == "never auth"


# ---------------------------------------------------------------- the daily insert limit
def test_the_daily_insert_limit_is_off_by_default_then_answers_72057(sandbox, wx, token) -> None:
    assert sandbox.config()["daily_insert_limit"] is None
    insert(wx, token, "o-0")
    sandbox.configure(daily_insert_limit=3)
    insert(wx, token, "o-1")
    insert(wx, token, "o-2")  # the third of the day
    assert insert_errcode(wx, token, "o-3") == 72057
    assert insert_errcode(wx, token, "o-1") == 72057  # the limit is looked at first
    assert sandbox.state()["inserts_today"] == {DEFAULT_APPID: 3}
    assert len(sandbox.bills()) == 3
    sandbox.configure(daily_insert_limit=None)
    insert(wx, token, "o-3")
    with pytest.raises(SandboxAdminError, match="daily_insert_limit"):
        sandbox.configure(daily_insert_limit=0)


def test_the_daily_insert_limit_resets_at_beijing_midnight() -> None:
    """In process with a clock of its own: the count is per UTC+8 calendar day and appid."""
    midnight_utc8 = 1_700_000_000 - (1_700_000_000 + 8 * 3600) % 86_400  # 00:00 UTC+8
    now = [midnight_utc8 - 10.0]
    state = SandboxState(Settings(daily_insert_limit=1), clock=lambda: now[0])
    body = {"grant_type": "client_credential", "appid": DEFAULT_APPID, "secret": DEFAULT_SECRET}
    token, _ = state.check_token(state.stable_token(body)["access_token"])
    media_id = state.upload_pdf(token, PDF, "a.pdf")["s_media_id"]

    def insert_one(order_id: str) -> int:
        return state.insert_bill(token, insertbill_body(order_id, media_id))["errcode"]

    assert insert_one("o-1") == 0
    assert insert_one("o-2") == E.TODAY_INSERT_LIMIT
    now[0] = midnight_utc8 - 0.001
    assert insert_one("o-2") == E.TODAY_INSERT_LIMIT
    now[0] = midnight_utc8
    assert state.inserts_today() == {}
    assert insert_one("o-2") == 0
    assert insert_one("o-3") == E.TODAY_INSERT_LIMIT


# ---------------------------------------------------------------- faults on the new endpoints
def test_an_errcode_fault_on_rejectinsert_refuses_nothing(sandbox, wx, token) -> None:
    sandbox.add_fault(endpoint="rejectinsert", kind="errcode", errcode=-1, order_ids=["o-f"])
    assert wx.rejectinsert(token, "o-other", "r")["errcode"] == 0
    assert wx.rejectinsert(token, "o-f", "r")["errcode"] == -1
    assert list(sandbox.rejections()) == ["o-other"]
    assert insert_errcode(wx, token, "o-f") == 0
    assert sandbox.order_answers("o-f")["rejectinsert"] == {"-1": 1}


def test_a_lost_refusal_answer_was_done_and_the_retry_sees_72035(sandbox, wx, token) -> None:
    sandbox.add_fault(endpoint="rejectinsert", kind="lost_answer", count=1)
    with pytest.raises(requests.RequestException):
        wx.rejectinsert(token, "o-lost", "refunded")
    assert list(sandbox.rejections()) == ["o-lost"]  # WeChat did it
    assert wx.rejectinsert(token, "o-lost", "refunded")["errcode"] == 72035
    assert sandbox.state()["lost_answers"] == 1


def test_a_lost_void_answer_was_done_and_the_retry_sees_72060(sandbox, wx, token) -> None:
    code = insert(wx, token, "o-lostvoid")["code"]
    sandbox.add_fault(endpoint="updatestatus", kind="lost_answer", order_ids=["o-lostvoid"])
    with pytest.raises(requests.RequestException):
        wx.updatestatus(token, DEFAULT_CARD_ID, code, REIMBURSE_CANCEL)
    sandbox.clear_faults()
    assert status_of(sandbox, "o-lostvoid") == REIMBURSE_CANCEL
    assert wx.updatestatus(token, DEFAULT_CARD_ID, code, REIMBURSE_CANCEL)["errcode"] == 72060


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"kind": "errcode", "errcode": 72054}, 72054),
        ({"kind": "http_5xx", "status": 502}, 502),
        ({"kind": "token_expire"}, 42001),
    ],
)
def test_faults_on_updatestatus_follow_the_bill_by_its_code(
    sandbox, wx, token, fault, expected
) -> None:
    hit = insert(wx, token, "o-hit")["code"]
    spared = insert(wx, token, "o-spared")["code"]
    rule = sandbox.add_fault(endpoint="updatestatus", order_ids=["o-hit"], count=1, **fault)
    assert wx.updatestatus(token, DEFAULT_CARD_ID, spared, REIMBURSE_LOCK)["errcode"] == 0
    response = wx.request(
        "POST",
        "/card/invoice/platform/updatestatus",
        params={"access_token": token},
        json={"card_id": DEFAULT_CARD_ID, "code": hit, "reimburse_status": REIMBURSE_LOCK},
    )
    got = response.status_code if response.status_code >= 500 else response.json()["errcode"]
    assert got == expected
    assert status_of(sandbox, "o-hit") == REIMBURSE_INIT  # the faulted call changed nothing
    [listed] = [r for r in sandbox.faults() if r["id"] == rule]
    assert listed["hits"] == 1 and listed["seen"] == 1


def test_timeout_and_latency_faults_on_the_new_endpoints(sandbox, wx, token) -> None:
    sandbox.add_fault(endpoint="rejectinsert", kind="timeout", timeout_s=0.5, count=1)
    slow = SandboxWeChat(sandbox.url, timeout=0.2)
    try:
        with pytest.raises(requests.Timeout):
            slow.rejectinsert(token, "o-slow", "r")
    finally:
        slow.close()
    assert "o-slow" in sandbox.rejections()  # handled, only the answer was held
    code = insert(wx, token, "o-lat")["code"]
    sandbox.add_fault(endpoint="updatestatus", kind="latency", latency_ms=100, count=1)
    assert wx.updatestatus(token, DEFAULT_CARD_ID, code, REIMBURSE_CANCEL)["errcode"] == 0
    assert {r["endpoint"] for r in sandbox.faults() if r["hits"]} == {
        "rejectinsert",
        "updatestatus",
    }
