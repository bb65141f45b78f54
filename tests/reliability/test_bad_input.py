"""Bad orders: each ends with a clear reason, WeChat never hears of it, and the good orders of the
same batch are issued.

Some are refused at the door (`make load-orders`: the line number and the reason, or the
database's own constraints); the rest reach the order table (a unit's own system may write rows
directly, see the README's contract) and end `invalid` when a run validates them, before any call.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from factories import MINIMAL_PDF, make_order, order_line, write_pdf
from wechat_nontax.issuing.batch import BatchIssuer
from wechat_nontax.issuing.batch_settings import Settings
from wechat_nontax.issuing.outcomes import Outcome
from wechat_nontax.issuing.pdfs import read_pdf
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.wechat.hook import WeChatNonTaxHook
from wechat_sandbox.client import DEFAULT_CARD_ID

NOW_ISH = 1_700_000_000

# (kind, changes to a good order's JSON line, words of the load report's reason)
REFUSED_AT_LOAD = [
    ("fee 0", {"fee": 0}, "fee: must be a positive number of fen"),
    ("fee negative", {"fee": -5}, "fee: must be a positive number of fen"),
    ("fee fractional", {"fee": 12.5}, "fee: must be an integer number of fen"),
    ("billing_time not a number", {"billing_time": "abc"}, "billing_time: must be an integer"),
    ("billing_no missing", {"billing_no": None}, "billing_no: is missing"),
    ("billing_code missing", {"billing_code": None}, "billing_code: is missing"),
    ("billing pair reused", {}, "billing_no + billing_code already used by another order"),
]


def test_bad_lines_are_refused_at_load_with_line_and_reason(orders_db, tmp_path):
    good = [make_order(i) for i in range(3)]
    lines = [order_line(good[0])]
    for n, (kind, changes, _) in enumerate(REFUSED_AT_LOAD, start=100):
        order = make_order(n)
        if kind == "billing pair reused":  # another order with order 0's number pair
            changes = {"billing_no": good[0].billing_no, "billing_code": good[0].billing_code}
        line = order_line(order, **changes)
        for field, value in changes.items():
            if value is None:  # absent, not null
                line = line.replace(f'"{field}": null, ', "").replace(f', "{field}": null', "")
        lines.append(line)
    lines += [order_line(good[1]), order_line(good[2])]
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    done = subprocess.run(
        [str(Path(sys.executable).with_name("nontax")), "--dsn", orders_db, "load", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = done.stdout
    assert done.returncode == 1 and report, report + done.stderr
    assert f"{len(lines)} lines: 3 new" in report, report
    assert f"{len(REFUSED_AT_LOAD)} rejected" in report
    for line_number, (kind, _, words) in enumerate(REFUSED_AT_LOAD, start=2):
        reported = [r for r in report.splitlines() if r.strip().startswith(f"line {line_number}:")]
        assert reported and words in reported[0], (kind, report)

    store = OrderStore(connect_dsn(orders_db))
    try:
        assert store.count_by_status() == {"authorized": 3}
    finally:
        store.close()


# (kind, Order fields, PDF bytes or None for no file, the field the reason names)
OVERSIZE = MINIMAL_PDF + b"0" * (2 * 1024 * 1024)
INVALID_IN_A_RUN = [
    ("fee absurdly large", {"fee": 10**12}, MINIMAL_PDF, "fee"),
    ("billing_time in milliseconds", {"billing_time": NOW_ISH * 1000}, MINIMAL_PDF, "billing_time"),
    ("billing_time of 9 digits", {"billing_time": 151116972}, MINIMAL_PDF, "billing_time"),
    ("billing_time far in the future", {"billing_time": 4_102_444_800}, MINIMAL_PDF,
     "billing_time"),
    ("title empty", {"title": ""}, MINIMAL_PDF, "title"),
    ("title overlong", {"title": "某" * 65}, MINIMAL_PDF, "title"),
    ("title with control characters", {"title": "门诊\x1b[31m收费\x07"}, MINIMAL_PDF, "title"),
    ("billing_no empty", {"billing_no": ""}, MINIMAL_PDF, "billing_no"),
    ("billing_code empty", {"billing_code": ""}, MINIMAL_PDF, "billing_code"),
    ("SQL in billing_no", {"billing_no": "1'; DROP TABLE nontax.bill_order; --"}, MINIMAL_PDF,
     "billing_no"),
    ("SQL in order_id", {"order_id": "T1' OR '1'='1"}, MINIMAL_PDF, "order_id"),
    ("no PDF location", {"pdf_path": None}, None, "pdf_path"),
    ("PDF file missing", {}, None, "pdf"),
    ("PDF empty", {}, b"", "pdf"),
    ("not a PDF", {}, b"<html><body>bill</body></html>", "pdf"),
    ("PDF over 2 MiB", {}, OVERSIZE, "pdf"),
    ("PDF path escaping the root", {"pdf_path": "../../../etc/passwd"}, None, "pdf_path"),
    ("unknown card_id", {"card_id": "pUnknownCard0000000000000000"}, MINIMAL_PDF, "card_id"),
]  # fmt: skip


@pytest.mark.e2e
def test_bad_orders_of_a_batch_end_invalid_unsent_and_the_good_ones_are_issued(make_rig):
    # The account's card ids are configured: an unknown card is refused before any call.
    rig = make_rig(card_ids=[DEFAULT_CARD_ID])
    good = [make_order(i) for i in range(6)]
    bad = {}
    for n, (kind, fields, pdf, _) in enumerate(INVALID_IN_A_RUN, start=100):
        order = make_order(n, **fields)
        bad[kind] = order
        if pdf is not None:
            write_pdf(rig.pdf_root, order, pdf)
    for order in good:
        write_pdf(rig.pdf_root, order)
    # Straight into the table, as a unit's own system may write them (store: bound parameters).
    rig.store.upsert_orders([*good[:3], *bad.values(), *good[3:]])

    result = rig.run({"batch_size": 100})
    assert result.run_state == "failed"  # red: the bad orders need a person
    assert result.states("issue_bills") == {0: "failed"}

    statuses = rig.statuses()
    assert all(statuses[o.order_id] == "inserted" for o in good)
    calls = rig.sandbox.calls()
    assert calls.get("setpdf", 0) == len(good) and calls.get("insertbill", 0) == len(good)
    named = set(rig.sandbox.orders())
    uploaded = {m["filename"] for m in rig.sandbox.media()}
    reasons = {}
    for kind, _, _, field in INVALID_IN_A_RUN:
        row = rig.store.get_row(bad[kind].order_id)
        reasons[kind] = row["reason"]
        assert row["status"] == "invalid", (kind, row["status"])
        assert row["reason"].startswith(f"{field}:"), (kind, row["reason"])
        assert "\n" not in row["reason"] and len(row["reason"]) < 400
        assert row["attempts"] == 0
        assert bad[kind].order_id not in named and f"{bad[kind].order_id}.pdf" not in uploaded
    # The SQL stayed text; the table it names is there.
    assert rig.sql("SELECT to_regclass('nontax.bill_order') IS NOT NULL") == [(True,)]
    assert "card ids" in reasons["unknown card_id"]
    assert rig.violations([o.order_id for o in good]) == []
    assert len(INVALID_IN_A_RUN) + len(REFUSED_AT_LOAD) >= 15


def test_unknown_card_without_the_allow_list_fails_with_wechats_reason(
    orders_db, wechat_conn, tmp_path
):
    store = OrderStore(connect_dsn(orders_db))
    hook = WeChatNonTaxHook()
    try:
        order = make_order(1, card_id="pUnknownCard0000000000000000")
        write_pdf(tmp_path, order)
        store.upsert_orders([order])
        assert hook.allowed_card_ids is None
        issuer = BatchIssuer(
            hook,
            store,
            Settings(pdf_root=str(tmp_path), time_budget_s=20),
            run_id="run-1",
            read_pdf=lambda root, rel, limit: read_pdf(root, rel, max_bytes=limit),
            sleep=lambda s: None,
        )
        [result] = issuer.run([order.order_id])
        assert result.outcome is Outcome.FAILED
        row = store.get_row(order.order_id)
        assert row["status"] == "failed" and row["last_errcode"] == 40078
        assert "card_id not authorised" in row["reason"] and "40078" in row["reason"]
        assert wechat_conn.bills() == []
    finally:
        hook.close()
        store.close()
