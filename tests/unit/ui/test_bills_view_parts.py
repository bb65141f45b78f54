"""The Bills view's pure parts: amounts in yuan, times in the reader's zone, links to Airflow
pages, the same-origin check of a POST, the actions each order and person are offered, and that
the plugin module stays cheap to import (every worker imports it)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from wechat_nontax.requests.store import RequestRow
from wechat_nontax.store.reads import PageMark
from wechat_nontax.ui.guards import same_origin
from wechat_nontax.ui.i18n import Reader
from wechat_nontax.ui.view import (
    ACTIONS,
    EVERY_STATUS,
    STATUS_CHOICES,
    action_of,
    dags_of_step,
    day_start,
    mark_of,
    offered,
    page_mark,
    printable,
    statuses_of,
    task_url,
    what_was_done,
    yuan,
)


@pytest.mark.parametrize(
    ("fen", "text"),
    [(1, "0.01"), (100, "1.00"), (102, "1.02"), (123456789, "1,234,567.89"), (None, "")],
)
def test_fen_are_shown_as_yuan_exactly(fen, text):
    assert yuan(fen) == text


SHANGHAI = Reader("en", ZoneInfo("Asia/Shanghai"))
UTC_READER = Reader("en", ZoneInfo("UTC"))


def test_every_time_is_shown_in_the_readers_zone_the_billing_time_too():
    at = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)
    assert SHANGHAI.when(at) == "2026-12-07 07:30:00"
    assert UTC_READER.when(at) == "2026-12-06 23:30:00"
    assert SHANGHAI.when_unix(1700000000) == "2023-11-15 06:13:20"
    assert UTC_READER.when_unix(1700000000) == "2023-11-14 22:13:20"
    assert SHANGHAI.zone_label() == "Asia/Shanghai (UTC+08:00)"


def test_a_day_of_the_filter_is_a_day_of_the_readers_zone():
    """An order that went red at 07:30 in Shanghai on 7 December (23:30 UTC on the 6th) is in
    the day 2026-12-07 of a reader in Shanghai."""
    since = day_start("2026-12-07", "since", SHANGHAI)
    until = day_start("2026-12-07", "until", SHANGHAI, days_after=1)
    red_at = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)
    assert since <= red_at < until
    assert since == datetime(2026, 12, 6, 16, 0, tzinfo=UTC)
    assert not day_start("2026-12-07", "since", UTC_READER) <= red_at
    assert SHANGHAI.today() == datetime.now(ZoneInfo("Asia/Shanghai")).date()
    assert isinstance(SHANGHAI.yesterday(), date)


def test_a_search_looks_in_every_status_whatever_the_filter():
    assert statuses_of("attention", "T1") == EVERY_STATUS
    assert statuses_of("inserted", "T1") == EVERY_STATUS
    assert statuses_of("inserted") == ["inserted"]
    assert {"unauthorized", "declined"} <= set(EVERY_STATUS)
    assert {"unauthorized", "declined"} <= set(STATUS_CHOICES)


def test_an_action_on_many_is_named_in_each_orders_history_note():
    assert action_of("made due again by admin (Airflow user) in the Bills page, action #12") == 12
    assert action_of("reset by admin") is None and action_of(None) is None


RUN = "manual__2026-01-01T00:00:00+00:00"
QUOTED_RUN = "manual__2026-01-01T00%3A00%3A00%2B00%3A00"


def test_the_task_link_names_the_dag_and_batch_the_holder_does():
    base = f"/dags/nontax_insertbill/runs/{QUOTED_RUN}/tasks"
    assert task_url(f"{RUN}|issue_bills|3|2") == f"{base}/issue_bills/mapped/3"  # before DAGs
    assert task_url(f"nontax_insertbill|{RUN}|issue_bills|3|2") == f"{base}/issue_bills/mapped/3"
    assert (
        task_url(f"nontax_requests|{RUN}|carry_out_requests|-1|1")
        == f"/dags/nontax_requests/runs/{QUOTED_RUN}/tasks/carry_out_requests"
    )
    assert (
        task_url(f"{RUN}|carry_out_requests|-1|1")
        == f"/dags/nontax_requests/runs/{QUOTED_RUN}/tasks/carry_out_requests"
    )
    assert task_url(f"nontax_waiting|{RUN}|issue_bills|0|1") == (
        f"/dags/nontax_waiting/runs/{QUOTED_RUN}/tasks/issue_bills/mapped/0"
    )
    for not_a_holder in (None, "", "x", f"{RUN}|issue_bills|x|2", f"a|b|{RUN}|issue_bills|3|2"):
        assert task_url(not_a_holder) is None, not_a_holder


@pytest.mark.parametrize(
    ("step", "dags"),
    [
        ("request", ("nontax_requests",)),
        ("refuse", ("nontax_requests",)),
        ("void", ("nontax_requests",)),
        ("operator", ("nontax_insertbill",)),
        ("insert", ("nontax_insertbill", "nontax_waiting")),
        ("validate", ("nontax_insertbill", "nontax_waiting")),
    ],
)
def test_a_history_rows_step_tells_which_dags_may_have_made_its_run(step, dags):
    assert dags_of_step(step) == dags


def _history(step: str, outcome: str, run_id: str | None = None) -> dict:
    at = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    return {"step": step, "outcome": outcome, "run_id": run_id, "at": at, "errmsg": "by admin"}


def _request(request_id: int, kind: str, status: str) -> RequestRow:
    at = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    return RequestRow(request_id, "T1", kind, status, "x", "admin", at, None, None, 0, at)


def test_a_message_of_success_is_what_the_history_or_requests_recorded():
    load = [_history("load", "new")]
    # Nothing recorded: no message, whatever the link says.
    r = SHANGHAI
    assert what_was_done("reset", load, [], None, None, r) is None
    assert what_was_done("issue", load, [], None, RUN, r) is None
    assert what_was_done("refuse", load, [], 1, RUN, r) is None
    assert what_was_done("refuse", load, [_request(1, "void", "pending")], 1, RUN, r) is None
    assert what_was_done("refuse", load, [_request(1, "refuse", "pending")], 2, RUN, r) is None
    assert what_was_done("elsewhere", load, [], None, None, r) is None
    reset = what_was_done("reset", [*load, _history("reset", "authorized")], [], None, None, r)
    assert reset and "Made due again 2026-12-01 16:00:00 (by admin)" in reset.text
    issued = [*load, _history("operator", "issue_now", RUN)]
    assert what_was_done("issue", issued, [], None, "other", r) is None
    assert what_was_done("issue", issued, [], None, RUN, r).run_id == RUN
    asked = what_was_done("refuse", load, [_request(1, "refuse", "pending")], 1, RUN, r)
    assert asked.text.startswith("Refusal #1 asked for by admin") and asked.pending
    assert (asked.dag_id, asked.run_id) == ("nontax_requests", RUN)
    chinese = what_was_done(
        "refuse", load, [_request(1, "refuse", "pending")], 1, RUN, Reader("zh_CN", r.zone)
    )
    assert chinese.text == "拒绝开具申请 #1，由 admin 于 2026-12-01 16:00:00 提交：待处理。"
    over = what_was_done("void", load, [_request(1, "void", "done")], 1, RUN, r)
    assert over.text.endswith(": done.") and not over.pending and over.run_id is None


@pytest.mark.parametrize("value", ["T\x001", "a\tb", "x\ny", "\x7f"])
def test_control_characters_in_input_are_a_400(value):
    with pytest.raises(HTTPException) as refused:
        printable(value, "q")
    assert refused.value.status_code == 400 and "q: no control characters" in refused.value.detail
    assert printable("门诊 T-1|x", "q") == "门诊 T-1|x"


def test_the_last_day_cannot_be_ended_past_the_calendar_and_is_a_400():
    with pytest.raises(HTTPException) as refused:
        day_start("9999-12-31", "until", UTC_READER, days_after=1)
    assert refused.value.status_code == 400
    assert day_start("2026-12-31", "until", UTC_READER, days_after=1) == datetime(
        2027, 1, 1, tzinfo=UTC
    )


def test_a_page_mark_goes_into_a_link_and_comes_back_exactly():
    at = datetime(2026, 11, 30, 2, 3, 4, 567891, tzinfo=UTC)
    mark = mark_of({"updated_at": at, "order_id": "A|B 门诊"})  # any order_id, even with "|"
    assert page_mark(mark) == PageMark(at, "A|B 门诊")
    assert page_mark(None) is None and page_mark("") is None


@pytest.mark.parametrize(
    "mark", ["x", "2026-11-30T02:03:04+00:00|", "2026-11-30T02:03:04|T1", "|T1", "soon|T1"]
)
def test_a_bad_page_mark_is_a_400(mark):
    with pytest.raises(HTTPException) as refused:
        page_mark(mark)
    assert refused.value.status_code == 400


def _post(**headers: str) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/bills/reset", "headers": raw})


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "127.0.0.1:8080", "Origin": "http://127.0.0.1:8080"},
        {"Host": "127.0.0.1:8080", "Referer": "http://127.0.0.1:8080/bills/reset?id=T1"},
    ],
)
def test_a_post_from_this_origin_passes(headers):
    same_origin(_post(**headers))


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "127.0.0.1:8080", "Origin": "http://evil.example"},
        {"Host": "127.0.0.1:8080", "Origin": "http://127.0.0.1:8080.evil.example"},
        {"Host": "127.0.0.1:8080", "Referer": "http://evil.example/127.0.0.1:8080"},
        {"Host": "127.0.0.1:8080", "Origin": "null"},
        {"Host": "127.0.0.1:8080"},
    ],
)
def test_a_post_from_elsewhere_or_nowhere_is_refused(headers):
    with pytest.raises(HTTPException) as refused:
        same_origin(_post(**headers))
    assert refused.value.status_code == 403


def test_the_plugin_module_imports_nothing_of_the_view_and_opens_no_connection():
    code = (
        "import sys, wechat_nontax.ui.plugin as p; "
        "heavy = [m for m in ('wechat_nontax.ui.routes', 'psycopg2', 'fastapi') "
        "if m in sys.modules]; "
        "print(heavy, p.BillsPlugin.external_views[0]['category'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[] browse"


def test_behind_a_proxy_the_public_host_of_base_url_passes_too(monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/")
    same_origin(_post(Host="10.0.0.5:8080", Origin="https://airflow.example.org"))
    with pytest.raises(HTTPException):
        same_origin(_post(Host="10.0.0.5:8080", Origin="https://evil.example"))


EVERYTHING = frozenset({"edit", "trigger"})


@pytest.mark.parametrize(
    ("status", "fit"),
    [
        ("authorized", {"reset", "issue", "refuse"}),
        ("awaiting_auth", {"reset", "issue", "refuse"}),
        # Issue-now takes due orders only: on a red one the run would end red, the order as
        # it was.
        ("invalid", {"reset", "refuse"}),
        ("failed", {"reset", "refuse"}),
        ("inserted", {"void"}),
        ("duplicate", set()),
        ("rejected", set()),
        ("refused", set()),
        ("cancelled", set()),
        ("declined", set()),
        # Waiting for the payer: neither made due nor issued before the payer authorises.
        ("unauthorized", set()),
    ],
)
def test_each_status_offers_the_actions_that_fit_it(status, fit):
    row = {"status": status}
    assert set(offered(row, EVERYTHING)) == fit
    # Every action that does not fit says why, for the confirmation page.
    assert all(a.why_not(row) for name, a in ACTIONS.items() if name not in fit)


def test_a_pending_refusal_rules_out_make_due_and_issue_now():
    row = {"status": "invalid", "refusal_pending": True}
    assert set(offered(row, EVERYTHING)) == {"refuse"}
    assert "refusal" in ACTIONS["reset"].why_not(row)


@pytest.mark.parametrize(
    ("may", "fit"),
    [
        (frozenset(), set()),  # a viewer is offered nothing
        (frozenset({"edit"}), {"reset", "refuse"}),  # no run may be asked: no issue-now
        (EVERYTHING, {"reset", "issue", "refuse"}),
    ],
)
def test_a_person_is_offered_only_what_they_may_do(may, fit):
    assert set(offered({"status": "authorized"}, may)) == fit


@pytest.mark.parametrize("kind", ["refuse", "void"])
def test_a_duplicate_orders_refuse_and_void_send_the_person_to_the_back_office_with_its_facts(
    kind,
):
    """The page's advice for an order whose code WeChat never gave back names what WeChat's
    back office needs to find its bill, as the tools' does."""
    row = {
        "order_id": "D5", "status": "duplicate", "card_id": "pXYZ", "appid": "wx1",
        "billing_no": "B-77", "billing_code": "C-88", "fee": 200,
    }  # fmt: skip
    why = ACTIONS[kind].why_not(row)
    assert "back office" in why
    assert all(fact in why for fact in ("D5", "pXYZ", "B-77", "C-88", "200 fen"))
