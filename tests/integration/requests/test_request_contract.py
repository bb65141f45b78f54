"""The request table's contract as the database holds it (migration 0010), and what a person is
told and can do about a request that was not carried out: real Postgres, the sandbox over HTTP,
the command line."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from datetime import timedelta

import psycopg2
import pytest

from factories import ask, insert_orders_plainly, make_order, request_runner
from nontax_dev.pg import drop_database, fresh_database, run_sql
from wechat_nontax.cli.main import main as tools_main
from wechat_nontax.issuing.order_calls import LEFT_TO_REFUSAL, REFUSAL_RECHECK_S
from wechat_nontax.issuing.outcomes import NEEDS_PERSON as ISSUING_NEEDS_PERSON
from wechat_nontax.issuing.outcomes import Outcome
from wechat_nontax.requests.contract import check_request
from wechat_nontax.requests.runner import MAX_REQUEST_CALLS, RequestOutcome
from wechat_nontax.settings import BEIJING_TIME
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.holders import Hold
from wechat_nontax.store.migrate import known_migrations, migrate
from wechat_nontax.store.orders import OrderStore

RUN = "scheduled__requests-1"
CONTRACT_VERSION = 10  # store/migrations/0010_request_contract.sql
INSERT = (
    "INSERT INTO nontax.bill_request (order_id, kind, reason, requested_by) "
    "VALUES (%s, %s, %s, 'his')"
)


def carry_out(env, requests_store, try_number=1):
    return request_runner(env, requests_store, run_id=RUN, try_number=try_number).run()


def tool(env, capsys, *args):
    code = tools_main(["--dsn", env.dsn, *args])
    out = capsys.readouterr()
    return code, out.out + out.err


# -- one rule for a reason ------------------------------------------------------------------


def test_the_database_and_the_tools_refuse_the_same_characters_in_a_reason(env):
    """Every code point a reason may hold, as the tools (and the runner) judge it and as the
    table's CHECK judges it: the same verdict for each."""
    points = [c for c in range(1, sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    python_bad = {c for c in points if check_request("refuse", f"a{chr(c)}b", "x") is not None}
    rows = env.sql(
        "SELECT c FROM generate_series(1, %s) c WHERE c NOT BETWEEN 55296 AND 57343 "
        "AND NOT nontax.reason_is_shown_text('a' || chr(c) || 'b')",
        (sys.maxunicode,),
    )
    assert {c for (c,) in rows} == python_bad
    assert {0x09, 0x200B, 0x2028, 0x202E, 0xFEFF} <= python_bad


@pytest.mark.parametrize(
    "reason",
    ["", " ", "\u3000\u00a0 ", "\t", "a\tb", "零宽\u200b空格", "行\u2028分隔", "x" * 101,
     "退" * 101, "ok", "退" * 100, " 前后有空格 ", "emoji 🧾 ok", "\u3000全角空格开头"],
)  # fmt: skip
def test_a_reason_the_tools_refuse_is_refused_by_the_table_and_one_they_take_is_taken(env, reason):
    env.orders(1)
    tools_take = check_request("refuse", reason, "his") is None
    if tools_take:
        env.sql(INSERT, ("T00000000", "refuse", reason))
        assert env.sql("SELECT reason FROM nontax.bill_request") == [(reason,)]
    else:
        with pytest.raises(psycopg2.errors.CheckViolation):
            env.sql(INSERT, ("T00000000", "refuse", reason))
        assert env.sql("SELECT count(*) FROM nontax.bill_request") == [(0,)]


# -- the pipeline's columns -------------------------------------------------------------------


def test_the_pipelines_columns_start_at_their_defaults_whatever_the_insert_says(
    env, requests_store
):
    env.orders(2)
    env.sql(
        "INSERT INTO nontax.bill_request (request_id, order_id, kind, reason, requested_by, "
        "requested_at, status, outcome, errcode, attempts, not_before, run_id, held_by, done_at, "
        "updated_at) VALUES (424242, 'T00000000', 'refuse', '已退费', 'his', now() - '3 days'::"
        "interval, 'done', 'done', 0, 12, now() + '1 day'::interval, 'run-x', 'x|y|0|1', now(), "
        "now() - '3 days'::interval)"
    )
    [row] = env.sql(
        "SELECT request_id <> 424242, requested_at > now() - '1 minute'::interval, status, "
        "outcome, errcode, attempts, not_before, run_id, held_by, done_at FROM nontax.bill_request"
    )
    assert row == (True, True, "pending", None, None, 0, None, None, None, None)
    # Another row's number is not taken from under the sequence: the next insert goes in.
    env.sql(INSERT, ("T00000001", "refuse", "也退费"))
    # Pending, so carried out: the order is refused at WeChat and never inserted.
    results = carry_out(env, requests_store)
    assert {r.order_id: r.outcome for r in results} == {
        "T00000000": RequestOutcome.DONE, "T00000001": RequestOutcome.DONE,
    }  # fmt: skip
    assert set(env.sandbox.rejections()) == {"T00000000", "T00000001"}
    assert env.issue(["T00000000"])["T00000000"].outcome == "already_done"
    assert env.sandbox.bills() == []


# -- a refusal not carried out keeps its order off issuing ----------------------------------


def fail_refusal(env, requests_store):
    """A refusal whose calls are answered 72036 (busy) until it fails for a person."""
    assert ask(env, "T00000000", "refuse").accepted
    env.sandbox.add_fault(endpoint="rejectinsert", kind="errcode", errcode=72036)
    [result] = carry_out(env, requests_store)
    assert result.outcome is RequestOutcome.FAILED, result
    env.sandbox.clear_faults()
    assert env.sandbox.calls()["rejectinsert"] == MAX_REQUEST_CALLS


def test_a_failed_refusal_keeps_its_order_off_issuing_until_a_person_withdraws_it(
    env, requests_store, capsys
):
    env.orders(2)
    fail_refusal(env, requests_store)
    [(request_id,)] = env.sql("SELECT request_id FROM nontax.bill_request")
    # The next issuing run leaves the order alone, and says why.
    claim = env.store.claim_run(
        "run-after", lease_s=60, split=lambda ids: [ids], order_ids=["T00000000", "T00000001"]
    )
    assert claim.order_ids == ["T00000001"]
    assert claim.not_taken[0]["why"] == "refusing"
    results = env.issue(["T00000000", "T00000001"], run_id="run-after")
    assert results["T00000000"].outcome == "not_due"
    assert [b["order_id"] for b in env.sandbox.bills()] == ["T00000001"]
    # The attention list says what keeps the order and what a person can do.
    code, out = tool(env, capsys, "attention")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith(f"#{request_id} "))
    assert "[failed]" in line and "kept off issuing until you decide" in line
    assert f"make withdraw REQUEST={request_id}" in line
    assert "make refuse ORDER=T00000000" in line
    # A pending request cannot be withdrawn, nor an unknown one.
    assert ask(env, "T00000001", "void").accepted
    [(void_id,)] = env.sql("SELECT request_id FROM nontax.bill_request WHERE kind = 'void'")
    assert tool(env, capsys, "withdraw", str(void_id))[0] == 1
    assert tool(env, capsys, "withdraw", "999999")[0] == 1
    # Withdrawn: the order is issued by the next run, once.
    code, out = tool(env, capsys, "withdraw", str(request_id), "--note", "not refunded after all")
    assert code == 0, out
    assert env.sql(
        "SELECT status, outcome LIKE 'withdrawn by %%: not refunded after all; was: %%' "
        "FROM nontax.bill_request WHERE request_id = %s",
        (request_id,),
    ) == [("withdrawn", True)]
    assert ("request", "withdrawn") in [(a.step, a.outcome) for a in env.store.history("T00000000")]
    assert env.issue(["T00000000"], run_id="run-later")["T00000000"].outcome == "inserted"
    assert tool(env, capsys, "withdraw", str(request_id))[0] == 1  # withdrawn already
    code, out = tool(env, capsys, "attention")
    assert f"#{request_id} " not in out


def test_a_failed_refusal_asked_again_is_replaced_and_carried_out(env, requests_store, capsys):
    env.orders(1)
    fail_refusal(env, requests_store)
    [(first,)] = env.sql("SELECT request_id FROM nontax.bill_request")
    again = ask(env, "T00000000", "refuse", "退费(再次)")
    assert again.accepted, again.reason
    rows = env.sql("SELECT request_id, status, outcome FROM nontax.bill_request ORDER BY 1")
    assert [r[:2] for r in rows] == [(first, "withdrawn"), (again.request_id, "pending")]
    assert rows[0][2].startswith(f"asked again as #{again.request_id} by duty@unit")
    [result] = carry_out(env, requests_store, try_number=2)
    assert result.outcome is RequestOutcome.DONE
    assert env.store.get_row("T00000000")["status"] == "refused"
    assert env.sandbox.rejections()["T00000000"]["reason"] == "退费(再次)"
    assert env.sandbox.bills() == []
    assert "0 requests to refuse or void need a look" in tool(env, capsys, "attention")[1]


def test_a_refusal_wechat_refuses_for_good_keeps_its_order_off_issuing(env, requests_store):
    """WeChat refuses the call itself (47001, a malformed request): the request fails at once,
    and the order is not issued while no person has decided."""
    env.orders(1)
    assert ask(env, "T00000000", "refuse").accepted
    env.sandbox.add_fault(endpoint="rejectinsert", kind="errcode", errcode=47001, count=1)
    [result] = carry_out(env, requests_store)
    assert result.outcome is RequestOutcome.FAILED, result
    assert env.issue(["T00000000"], run_id="run-after")["T00000000"].outcome == "not_due"
    assert env.sandbox.calls().get("insertbill", 0) == 0


def test_rows_an_older_schema_took_with_a_bad_reason_end_refused_and_keep_their_orders(
    orders_db_uri, tmp_path
):
    """Migrating a database whose request table holds reasons the rule refuses: each row keeps
    the rule (the reason as inserted kept in its outcome), a pending one ends `refused`, and
    its order is kept off issuing until a person decides."""
    older = [m for m in known_migrations() if m.version < CONTRACT_VERSION]
    for m in older:
        (tmp_path / f"{m.version:04d}_{m.name}.sql").write_text(m.sql, encoding="utf-8")
    name = f"nontax_contract_{uuid.uuid4().hex[:8]}"
    dsn = fresh_database(orders_db_uri, name)
    try:
        migrate(dsn, tmp_path)
        store = OrderStore(connect_dsn(dsn))
        insert_orders_plainly(dsn, [make_order(0), make_order(1)])
        run_sql(
            dsn,
            "INSERT INTO nontax.bill_request (order_id, kind, reason, requested_by) VALUES "
            "('T00000000', 'refuse', E'退费\\t已办', 'his'), "
            "('T00000001', 'refuse', E'\\u200b', 'his')",
            "UPDATE nontax.bill_request SET status = 'refused', outcome = 'not sent: bad' "
            "WHERE order_id = 'T00000001'",
        )
        migrate(dsn)
        rows = run_sql(
            dsn,
            "SELECT order_id, status, nontax.reason_is_shown_text(reason), outcome "
            "FROM nontax.bill_request ORDER BY order_id",
        )
        assert [r[:3] for r in rows] == [
            ("T00000000", "refused", True),
            ("T00000001", "refused", True),
        ]
        assert '"退费\\t已办"' in rows[0][3]
        assert rows[1][3].startswith("not sent: bad; ") and '"\u200b"' in rows[1][3]
        assert store.claim_due("run-after", lease_s=60) == []
        store.close()
    finally:
        drop_database(orders_db_uri, name)


# -- advice the tools then follow -------------------------------------------------------------


def test_a_duplicate_order_is_sent_to_wechats_back_office_with_its_facts(
    env, requests_store, capsys
):
    orders = env.orders(1)
    env.issue(orders)
    # WeChat has the bill (an insert whose answer was lost), the order row does not know it: a
    # refusal is answered 72056 and records the order `duplicate`.
    env.sql(
        "UPDATE nontax.bill_order SET status = 'authorized', code = NULL, openid = NULL, "
        "inserted_at = NULL WHERE order_id = 'T00000000'"
    )
    assert ask(env, "T00000000", "refuse").accepted
    [result] = carry_out(env, requests_store)
    assert result.outcome is RequestOutcome.REFUSED
    facts = (
        f"order_id T00000000, card_id {orders[0].card_id}, appid {orders[0].appid}, "
        f"billing_no {orders[0].billing_no}, billing_code {orders[0].billing_code}, "
        f"fee {orders[0].fee} fen"
    )
    row = env.store.get_row("T00000000")
    assert row["status"] == "duplicate"
    reason = row["reason"]
    assert facts in env.sql("SELECT outcome FROM nontax.bill_request")[0][0]
    assert "back office" in reason and facts in reason and "void the bill instead" not in reason
    # `make void` does not take a duplicate: it says where to go and with what.
    code, out = tool(env, capsys, "void", "T00000000", "--reason", "冲红")
    assert code == 1
    assert "void it in WeChat's back office" in out and facts in out
    code, out = tool(env, capsys, "refuse", "T00000000", "--reason", "退费")
    assert code == 1 and "back office" in out and facts in out
    # The attention list says the same, and how to close the request.
    code, out = tool(env, capsys, "attention")
    line = next(x for x in out.splitlines() if " refuse T00000000 [refused]" in x)
    assert "void it in WeChat's back office" in line and facts in line
    assert "make withdraw REQUEST=" in line


def test_status_shows_a_quota_stops_end_in_beijing_time(env, capsys):
    stop = env.store.record_quota_stop(
        "wx-app", "insert", seconds=3600, errcode=45009, errmsg="reach max api daily quota limit",
        run_id="run-1",
    )  # fmt: skip
    code, out = tool(env, capsys, "status")
    beijing = stop.until.astimezone(BEIJING_TIME)
    assert code == 0
    assert f"no call before {beijing:%Y-%m-%d %H:%M} Beijing time" in out
    assert beijing.utcoffset() == timedelta(hours=8)


def test_attention_lists_a_request_whose_call_went_out_and_was_never_written_back(
    env, requests_store, capsys
):
    """A try took the request and made its call, then stopped before writing the answer back
    (a crash): until the next run it is in flight, and the attention list says so."""
    env.orders(1)
    assert ask(env, "T00000000", "refuse").accepted
    [request] = requests_store.pending()
    taken = requests_store.take(
        request, run_id=RUN, holder=f"nontax_requests|{RUN}|carry_out_requests|-1|1", hold_s=120
    )
    requests_store.note_call(taken)
    env.hook.reject_insert("T00000000", request.reason)
    code, out = tool(env, capsys, "attention")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith(f"#{request.request_id} "))
    assert "[pending]" in line and "in flight" in line and "1 call(s) made" in line
    assert "1 requests to refuse or void need a look" in out


# -- a refusal asked while a batch runs -------------------------------------------------------


def test_a_refusal_asked_while_a_batch_runs_is_not_overtaken_by_its_insert(env, requests_store):
    """The batch holds its six orders from its start and sends them one after the other (each
    insert slowed down); a refusal of its last order is asked once the batch is under way: the
    order is left to the refusal before its first call, and the requests run refuses it."""
    env.orders(6)
    env.sandbox.add_fault(endpoint="insertbill", kind="latency", latency_ms=300)
    ids = [f"T{n:08d}" for n in range(6)]
    results = {}
    batch = threading.Thread(
        target=lambda: results.update(env.issue(ids, run_id="run-issue", max_workers=1))
    )
    batch.start()
    try:
        deadline = time.monotonic() + 30
        while env.sandbox.calls().get("insertbill", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert env.store.get_row("T00000005")["held_by"] is not None  # the batch holds it
        assert ask(env, "T00000005", "refuse").accepted
    finally:
        batch.join(60)
    assert not batch.is_alive()
    assert {i: r.outcome for i, r in results.items()} == {
        **{i: Outcome.INSERTED for i in ids[:5]}, "T00000005": Outcome.NOT_DUE,
    }  # fmt: skip
    assert results["T00000005"].outcome not in ISSUING_NEEDS_PERSON  # the batch stays green
    assert "refusal of it was asked while its batch ran" in results["T00000005"].reason
    # Nothing was sent for it: no upload, no insert; its hold and claim ended.
    assert [b["order_id"] for b in env.sandbox.bills()] == ids[:5]
    assert env.sandbox.calls()["setpdf"] == 5
    assert "insertbill" not in env.sandbox.order_answers("T00000005")
    row = env.store.get_row("T00000005")
    assert (row["status"], row["held_by"], row["claimed_by"]) == ("authorized", None, None)
    steps = [(a.step, a.outcome) for a in env.store.history("T00000005")]
    assert steps[-2:] == [("request", "pending"), ("request", "left_to_refusal")]
    # The requests run carries the refusal out at once: nothing holds the order any more.
    [result] = carry_out(env, requests_store)
    assert result.outcome is RequestOutcome.DONE, result
    assert env.store.get_row("T00000005")["status"] == "refused"
    assert set(env.sandbox.rejections()) == {"T00000005"}
    assert "insertbill" not in env.sandbox.order_answers("T00000005")


def test_a_refusal_asked_while_an_insert_waits_to_be_retried_keeps_the_retry_from_going_out(
    env, requests_store
):
    """The order's first insert is answered -1 (not inserted, retried after a backoff); its
    refusal is asked during the backoff: the retry is not sent, the refusal is carried out."""
    env.orders(1)
    env.sandbox.add_fault(
        endpoint="insertbill", kind="errcode", errcode=-1, count=1, order_ids=["T00000000"]
    )
    asked = []

    def backoff(seconds):
        if not asked:
            asked.append(ask(env, "T00000000", "refuse"))

    result = env.issue(["T00000000"], sleep=backoff)["T00000000"]
    assert asked[0].accepted
    assert (result.outcome, result.reason) == (Outcome.NOT_DUE, LEFT_TO_REFUSAL)
    assert env.sandbox.order_answers("T00000000")["insertbill"] == {"-1": 1}
    [done] = carry_out(env, requests_store)
    assert done.outcome is RequestOutcome.DONE, done
    assert env.store.get_row("T00000000")["status"] == "refused"
    assert env.sandbox.bills() == []


def test_a_second_claim_of_the_run_does_not_take_back_an_order_left_to_its_refusal(env):
    """The run's claim step is cleared and run again after a batch left an order to its
    refusal: the order stays free for the requests run, not claimed again for an hour."""
    env.orders(2)
    ids = ["T00000000", "T00000001"]
    run = "nontax_insertbill|run-issue"
    holder = f"{run}|issue_bills|0|1"
    claim = env.store.claim_run(run, lease_s=3600, split=lambda claimed: [claimed])
    assert claim.order_ids == ids
    hold = env.store.hold_batch(holder, ids, hold_s=60)
    assert ask(env, "T00000001", "refuse").accepted
    assert env.store.leave_to_refusal(
        "T00000001", LEFT_TO_REFUSAL, run_id="run-issue",
        hold=Hold(holder, hold.held["T00000001"]),
    )  # fmt: skip
    again = env.store.claim_run(run, lease_s=3600, split=lambda claimed: [claimed])
    assert again.order_ids == ["T00000000"]
    assert env.store.get_row("T00000001")["claimed_by"] is None


class _SlowUpload:
    """WeChat's client, its uploads taking longer than REFUSAL_RECHECK_S; `during` runs while
    an upload is on its way."""

    def __init__(self, hook, during):
        self.hook, self.during = hook, during

    def __getattr__(self, name):
        return getattr(self.hook, name)

    def upload_pdf(self, pdf, filename="bill.pdf"):
        self.during()
        time.sleep(REFUSAL_RECHECK_S)
        return self.hook.upload_pdf(pdf, filename)


def test_a_refusal_asked_during_a_slow_upload_keeps_the_insert_from_going_out(env, requests_store):
    env.orders(1)
    asked = []
    api = _SlowUpload(env.hook, lambda: asked.append(ask(env, "T00000000", "refuse")))
    result = env.issue(["T00000000"], api=api)["T00000000"]
    assert asked[0].accepted
    assert (result.outcome, result.reason) == (Outcome.NOT_DUE, LEFT_TO_REFUSAL)
    assert env.sandbox.calls()["setpdf"] == 1
    assert "insertbill" not in env.sandbox.order_answers("T00000000")
    [done] = carry_out(env, requests_store)
    assert done.outcome is RequestOutcome.DONE, done
    assert env.sandbox.bills() == []
