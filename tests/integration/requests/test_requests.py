"""Requests to refuse an order or void its bill: asked for (`request_action`, the command line,
a row the unit's systems insert), and carried out by the runner on real Postgres and the
sandbox over HTTP (the DAG around it: tests/e2e/test_requests_dag.py)."""

from __future__ import annotations

import psycopg2
import pytest

from factories import ask, held, request_runner
from wechat_nontax.cli.main import main as tools_main
from wechat_nontax.issuing.pdfs import read_pdf
from wechat_nontax.requests.contract import why_not_carried_out
from wechat_nontax.requests.runner import MAX_REQUEST_CALLS, RequestOutcome
from wechat_nontax.wechat.validation import Limits


def runner(env, requests_store, *, run_id="scheduled__requests-1", try_number=1, **kwargs):
    return request_runner(env, requests_store, run_id=run_id, try_number=try_number, **kwargs)


def request_rows(env):
    return env.sql(
        "SELECT request_id, order_id, kind, status, outcome, errcode, attempts "
        "FROM nontax.bill_request ORDER BY request_id"
    )


# -- asking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order_id", "kind", "reason", "by", "expected"),
    [
        ("T00000000", "refuse", "", "duty", "reason: must not be empty or blank"),
        ("T00000000", "refuse", "   ", "duty", "reason: must not be empty or blank"),
        ("T00000000", "refuse", "退" * 101, "duty", "reason: must be at most 100 characters"),
        ("T00000000", "refuse", "two\nlines", "duty", "control or invisible characters"),
        ("T00000000", "cancel", "refunded", "duty", "kind must be one of refuse, void"),
        ("T00000000", "refuse", "refunded", " ", "requested_by must name who asks"),
        ("NOPE", "refuse", "refunded", "duty", "unknown order: not in the order table"),
        ("T00000000", "void", "refunded", "duty", "order is authorized: it has no bill"),
    ],
)
def test_a_bad_request_is_refused_with_its_reason_and_nothing_is_pending(
    env, order_id, kind, reason, by, expected
):
    env.orders(1)
    answer = ask(env, order_id, kind, reason, by)
    assert not answer.accepted
    assert expected in answer.reason
    assert request_rows(env) == []


def test_the_longest_reason_wechat_takes_is_accepted(env):
    env.orders(1)
    answer = ask(env, "T00000000", "refuse", "退" * 100)
    assert answer.accepted, answer.reason
    assert [r[3] for r in request_rows(env)] == ["pending"]


def test_a_second_open_request_of_the_same_kind_is_refused_and_noted(env):
    env.orders(1)
    first = ask(env, "T00000000", "refuse", by="alice")
    second = ask(env, "T00000000", "refuse", by="bob")
    assert first.accepted and not second.accepted
    assert f"pending already (#{first.request_id}, by alice)" in second.reason
    assert len(request_rows(env)) == 1
    notes = [(a.step, a.outcome) for a in env.store.history("T00000000")]
    assert notes[-2:] == [("request", "pending"), ("request", "request_refused")]


def test_refusing_an_inserted_order_is_refused_and_so_is_voiding_a_due_one(env):
    orders = env.orders(2)
    env.issue(orders[:1])
    refuse = ask(env, "T00000000", "refuse")
    void = ask(env, "T00000001", "void")
    assert not refuse.accepted and "void the bill instead" in refuse.reason
    assert not void.accepted and "refuse the order instead" in void.reason
    assert request_rows(env) == []
    assert env.sandbox.calls().get("rejectinsert", 0) == 0
    assert env.sandbox.calls().get("updatestatus", 0) == 0


def test_the_database_holds_the_contract_for_rows_the_units_systems_insert(env):
    env.orders(1)
    insert = (
        "INSERT INTO nontax.bill_request (order_id, kind, reason, requested_by) "
        "VALUES (%s, %s, %s, 'his')"
    )
    for values, error in [
        (("NOPE", "refuse", "r"), psycopg2.errors.ForeignKeyViolation),
        (("T00000000", "cancel", "r"), psycopg2.errors.CheckViolation),
        (("T00000000", "refuse", " "), psycopg2.errors.CheckViolation),
        (("T00000000", "refuse", "x" * 101), psycopg2.errors.CheckViolation),
    ]:
        with pytest.raises(error):
            env.sql(insert, values)
    env.sql(insert, ("T00000000", "refuse", "refunded"))
    with pytest.raises(psycopg2.errors.UniqueViolation):
        env.sql(insert, ("T00000000", "refuse", "again"))
    env.sql(insert, ("T00000000", "void", "a void may be asked beside it"))


def test_the_command_line_records_a_request_or_exits_1_with_the_reason(env, capsys):
    env.orders(1)
    assert tools_main(["--dsn", env.dsn, "refuse", "T00000000", "--reason", "退费"]) == 0
    assert "refuse request #" in capsys.readouterr().out
    assert tools_main(["--dsn", env.dsn, "refuse", "T00000000", "--reason", "again"]) == 1
    assert "pending already" in capsys.readouterr().err
    assert tools_main(["--dsn", env.dsn, "void", "NOPE", "--reason", "x"]) == 1
    assert "unknown order" in capsys.readouterr().err
    assert tools_main(["--dsn", env.dsn, "refuse", "T00000000", "--reason", ""]) == 1
    assert tools_main(["--dsn", env.dsn, "attention"]) == 0
    out = capsys.readouterr().out
    assert "0 requests to refuse or void need a look" in out
    assert tools_main(["--dsn", env.dsn, "history", "T00000000"]) == 0
    out = capsys.readouterr().out
    assert "requests:" in out and "refuse T00000000 [pending]" in out
    assert tools_main(["--dsn", env.dsn, "status"]) == 0
    assert "refuse pending" in capsys.readouterr().out


# -- the issuing runs keep off an order whose refusal is pending -------------------------------


def test_a_pending_refusal_keeps_the_issuing_claim_and_holds_off_the_order(env):
    env.orders(3)
    assert ask(env, "T00000001", "refuse").accepted
    assert env.store.claim_due("run-a", lease_s=60) == ["T00000000", "T00000002"]
    claim = env.store.peek_due(order_ids=["T00000001"])
    assert claim.order_ids == []
    assert claim.not_taken[0]["why"] == "refusing"
    hold = env.store.hold_batch("run-b|issue_bills|0|1", ["T00000001"], hold_s=60)
    assert hold.held == {} and hold.not_held["T00000001"].kind == "refusing"


# -- carrying out ---------------------------------------------------------------------------


def test_a_refusal_is_carried_out_once_and_the_order_is_never_inserted(env, requests_store):
    env.orders(2)
    assert ask(env, "T00000000", "refuse", "订单已退款").accepted
    [result] = runner(env, requests_store).run()
    assert result.outcome is RequestOutcome.DONE, result
    row = env.store.get_row("T00000000")
    assert row["status"] == "refused" and "订单已退款" in row["reason"]
    assert row["held_by"] is None and row["claimed_by"] is None
    assert env.sandbox.rejections()["T00000000"]["reason"] == "订单已退款"
    assert [r[3:] for r in request_rows(env)] == [("done", "done", 0, 1)]
    # The issuing run takes the other order only; the refused one is finished.
    results = env.issue(["T00000000", "T00000001"])
    assert results["T00000001"].outcome == "inserted"
    assert results["T00000000"].outcome == "already_done"
    assert [b["order_id"] for b in env.sandbox.bills()] == ["T00000001"]
    steps = [(a.step, a.outcome) for a in env.store.history("T00000000")]
    assert ("refuse", "refused") in steps


def test_a_void_sets_the_bill_cancelled_on_wechat_and_in_the_order(env, requests_store):
    orders = env.orders(1)
    env.issue(orders)
    code = env.store.get_row("T00000000")["code"]
    assert ask(env, "T00000000", "void", "冲红").accepted
    [result] = runner(env, requests_store).run()
    assert result.outcome is RequestOutcome.DONE, result
    row = env.store.get_row("T00000000")
    assert (row["status"], row["code"]) == ("cancelled", code)
    status = env.sandbox.statuses()["T00000000"]
    assert status["reimburse_status"] == "INVOICE_REIMBURSE_CANCEL"
    assert len(status["history"]) == 1


@pytest.mark.parametrize("kind", ["refuse", "void"])
def test_a_call_whose_answer_was_lost_is_recognised_as_done_by_the_retry(env, requests_store, kind):
    """The call went through on WeChat, the write-back never happened (a crash): the retry's
    call is answered 72035 / 72060 and the request ends done, with no second success."""
    orders = env.orders(1)
    if kind == "void":
        env.issue(orders)
    assert ask(env, "T00000000", kind).accepted
    if kind == "refuse":
        env.hook.reject_insert("T00000000", "refunded before issue")
    else:
        env.hook.update_status(orders[0].card_id, env.store.get_row("T00000000")["code"], "CANCEL")
    [result] = runner(env, requests_store).run()
    assert result.outcome is RequestOutcome.DONE, result
    assert "WeChat had it done already" in result.reason
    endpoint, errcode = ("rejectinsert", "72035") if kind == "refuse" else ("updatestatus", "72060")
    assert env.sandbox.order_answers("T00000000")[endpoint] == {"0": 1, errcode: 1}
    assert request_rows(env)[0][3:6] == ("done", result.reason, int(errcode))


def test_a_refusal_waits_while_a_batch_holds_the_order_then_ends_refused_once_inserted(
    env, requests_store
):
    """The batch held the order before the refusal was asked for: the refusal waits, the
    batch's insert goes through, and the refusal then ends `refused` (void it instead)."""
    orders = env.orders(1)
    batch = held(env.store, "T00000000", run_id="run-issue")
    assert ask(env, "T00000000", "refuse").accepted
    [waiting] = runner(env, requests_store).run()
    assert waiting.outcome is RequestOutcome.WAITING
    assert "held by run-issue|issue_bills" in waiting.reason
    assert env.sandbox.calls().get("rejectinsert", 0) == 0
    # The batch goes on with the order it holds: upload, insert, write back.
    pdf = read_pdf(str(env.pdf_root), orders[0].pdf_path, max_bytes=Limits().max_pdf_bytes)
    bill = env.hook.insert_bill(orders[0], env.hook.upload_pdf(pdf))
    assert env.store.record_inserted(
        "T00000000", bill.code, bill.openid, version=batch.version, run_id="run-issue"
    )
    [ended] = runner(env, requests_store, try_number=2).run()
    assert ended.outcome is RequestOutcome.REFUSED
    assert "void the bill instead" in ended.reason
    assert env.store.get_row("T00000000")["status"] == "inserted"
    assert env.sandbox.calls().get("rejectinsert", 0) == 0
    assert [r[3] for r in request_rows(env)] == ["refused"]


def test_a_void_of_a_bill_written_off_fails_for_a_person(env, requests_store):
    orders = env.orders(1)
    env.issue(orders)
    env.sandbox.set_bill_status("T00000000", "INVOICE_REIMBURSE_CLOSURE")
    assert ask(env, "T00000000", "void").accepted
    [result] = runner(env, requests_store).run()
    assert result.outcome is RequestOutcome.FAILED
    assert "written off" in result.reason
    assert env.store.get_row("T00000000")["status"] == "inserted"
    attention = requests_store.needs_attention()
    assert [(r.kind, r.status, r.errcode) for r in attention] == [("void", "failed", 72061)]


def test_transient_answers_are_retried_in_the_try_then_left_pending_for_a_later_run(
    env, requests_store
):
    env.orders(2)
    assert ask(env, "T00000000", "refuse").accepted
    env.sandbox.add_fault(endpoint="rejectinsert", kind="errcode", errcode=-1, count=1)
    [result] = runner(env, requests_store).run()
    assert result.outcome is RequestOutcome.DONE
    assert env.sandbox.order_answers("T00000000")["rejectinsert"] == {"-1": 1, "0": 1}

    assert ask(env, "T00000001", "refuse").accepted
    env.sandbox.add_fault(endpoint="rejectinsert", kind="http_5xx")
    [result] = runner(env, requests_store, time_budget_s=0).run()
    assert result.outcome is RequestOutcome.WAITING
    row = env.sql(
        "SELECT status, not_before > now(), attempts FROM nontax.bill_request "
        "WHERE order_id = 'T00000001'"
    )
    assert row == [("pending", True, 1)]
    order = env.store.get_row("T00000001")
    assert order["held_by"] is None and order["claimed_by"] is None
    # Past the calls a request may take, it fails for a person.
    env.sql(
        "UPDATE nontax.bill_request SET not_before = NULL, attempts = %s "
        "WHERE order_id = 'T00000001'",
        (MAX_REQUEST_CALLS,),
    )
    [result] = runner(env, requests_store).run()
    assert result.outcome is RequestOutcome.FAILED


def test_a_request_the_units_system_inserted_for_an_order_that_moved_on_is_refused(
    env, requests_store
):
    orders = env.orders(1)
    env.issue(orders)
    env.sql(
        "INSERT INTO nontax.bill_request (order_id, kind, reason, requested_by) "
        "VALUES ('T00000000', 'refuse', 'refunded', 'his')"
    )
    [result] = runner(env, requests_store).run()
    assert result.outcome is RequestOutcome.REFUSED
    assert result.reason == why_not_carried_out("refuse", "inserted")
    assert env.sandbox.calls().get("rejectinsert", 0) == 0


def test_a_daily_quota_answer_is_recorded_and_no_such_call_is_made_before_it_resets(
    env, requests_store
):
    """A quota answer to a refusal or a void goes in the daily quota record the issuing batches
    use: the run's other requests of that kind, and those asked later that day, wait for the
    reset without a call; the other kind's calls go on until they get their own answer."""
    orders = env.orders(6)
    env.issue(orders[3:])  # three bills to void
    for order in orders[:3]:
        assert ask(env, order.order_id, "refuse").accepted
    for order in orders[3:5]:
        assert ask(env, order.order_id, "void").accepted
    env.sandbox.add_fault(endpoint="rejectinsert", kind="errcode", errcode=45009)
    env.sandbox.add_fault(endpoint="updatestatus", kind="errcode", errcode=45009)
    results = runner(env, requests_store).run()
    assert {r.outcome for r in results} == {RequestOutcome.WAITING}
    calls = env.sandbox.calls()
    assert (calls["rejectinsert"], calls["updatestatus"]) == (1, 1)
    stops = env.sql("SELECT api, errcode, stopped_until FROM nontax.api_quota ORDER BY api")
    assert [(api, errcode) for api, errcode, _ in stops] == [("refuse", 45009), ("void", 45009)]
    until = stops[0][2]
    rows = env.sql(
        "SELECT status, errcode, not_before, attempts, outcome FROM nontax.bill_request "
        "ORDER BY request_id"
    )
    assert [(status, errcode) for status, errcode, *_ in rows] == [("pending", 45009)] * 5
    assert [attempts for *_, attempts, _ in rows] == [1, 0, 0, 1, 0]
    for _, _, not_before, _, outcome in rows:
        assert abs((not_before - until).total_seconds()) < 5
        assert "daily quota of" in outcome and "Beijing time" in outcome
    for order in orders[:5]:
        row = env.store.get_row(order.order_id)
        assert row["held_by"] is None and row["claimed_by"] is None
    # A refusal asked later that day: waits for the reset without a call.
    assert ask(env, orders[5].order_id, "void").accepted
    [later] = runner(env, requests_store, run_id="scheduled__requests-2").run()
    assert later.outcome is RequestOutcome.WAITING and "daily quota of void" in later.reason
    assert env.sandbox.calls() == calls
