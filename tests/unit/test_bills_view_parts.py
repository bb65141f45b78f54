"""The Bills view's pure parts: amounts in yuan, times, links to Airflow pages, the same-origin
check of a POST, and that the plugin module stays cheap to import (every worker imports it)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from wechat_nontax.bills_view import beijing, mark_of, page_mark, same_origin, task_url, yuan
from wechat_nontax.store import PageMark


@pytest.mark.parametrize(
    ("fen", "text"),
    [(1, "0.01"), (100, "1.00"), (102, "1.02"), (123456789, "1,234,567.89"), (None, "")],
)
def test_fen_are_shown_as_yuan_exactly(fen, text):
    assert yuan(fen) == text


def test_billing_time_is_shown_in_beijing_time():
    assert beijing(1700000000) == "2023-11-15 06:13:20 Beijing"


def test_the_task_link_names_the_batch_when_the_holder_does():
    run = "manual__2026-01-01T00:00:00+00:00"
    base = "/dags/nontax_insertbill/runs/manual__2026-01-01T00%3A00%3A00%2B00%3A00/tasks"
    assert task_url(run, f"{run}|issue_bills|3|2") == f"{base}/issue_bills/mapped/3"
    assert task_url(run, None) == f"{base}/issue_bills"
    assert task_url(run, "other_run|issue_bills|3|2") == f"{base}/issue_bills"


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


def _request(**headers: str) -> Request:
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
    same_origin(_request(**headers))


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
        same_origin(_request(**headers))
    assert refused.value.status_code == 403


def test_the_plugin_module_imports_nothing_of_the_view_and_opens_no_connection():
    code = (
        "import sys, nontax_bills_plugin as p; "
        "heavy = [m for m in ('wechat_nontax.bills_view', 'psycopg2', 'fastapi') "
        "if m in sys.modules]; "
        "print(heavy, p.NontaxBillsPlugin.external_views[0]['category'])"
    )
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join(str(root / d) for d in ("plugins", "include"))
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[] browse"


def test_behind_a_proxy_the_public_host_of_base_url_passes_too(monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/")
    same_origin(_request(Host="10.0.0.5:8080", Origin="https://airflow.example.org"))
    with pytest.raises(HTTPException):
        same_origin(_request(Host="10.0.0.5:8080", Origin="https://evil.example"))


@pytest.mark.parametrize(
    ("status", "offered"),
    [
        ("authorized", {"reset", "issue", "refuse"}),
        ("awaiting_auth", {"reset", "issue", "refuse"}),
        ("invalid", {"reset", "issue", "refuse"}),
        ("failed", {"reset", "issue", "refuse"}),
        ("inserted", {"void"}),
        ("duplicate", set()),
        ("rejected", set()),
        ("refused", set()),
        ("cancelled", set()),
    ],
)
def test_each_status_offers_the_actions_that_fit_it(status, offered):
    from wechat_nontax.bills_view import ACTIONS

    row = {"status": status}
    assert {name for name, a in ACTIONS.items() if a.why_not(row) is None} == offered
    # Every action that does not fit says why, for the confirmation page.
    assert all(a.why_not(row) for name, a in ACTIONS.items() if name not in offered)
