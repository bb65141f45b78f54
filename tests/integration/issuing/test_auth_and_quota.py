"""Asking getauthdata before a re-insert, daily quotas shared through the order database, and a
failing token endpoint: the issuing batch against the sandbox and Postgres.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from factories import make_order, write_pdf
from wechat_nontax.issuing.outcomes import Outcome
from wechat_nontax.wechat.rules import AUTHORIZATION_RECHECK_S
from wechat_sandbox.client import DEFAULT_APPID

BEIJING = timezone(timedelta(hours=8))


def next_beijing_midnight(now: datetime) -> datetime:
    local = now.astimezone(BEIJING)
    return (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def waiting_order(env, n=0):
    """An order that got 72038 on its first insert, and whose recheck time has come."""
    [order] = env.orders(1, start=n)
    env.sandbox.set_authorization(order.order_id, "unauthorized")
    first = env.issue([order], run_id="run-0")
    assert first[order.order_id].outcome is Outcome.AWAITING_AUTH
    env.sql(
        "UPDATE nontax.bill_order SET not_before = now() - interval '1 second' WHERE order_id = %s",
        (order.order_id,),
    )
    return order


def insert_calls(env, order_id):
    return sum(env.sandbox.order_answers(order_id).get("insertbill", {}).values())


def auth_calls(env, order_id):
    return sum(env.sandbox.order_answers(order_id).get("getauthdata", {}).values())


# -- getauthdata before a re-insert ------------------------------------------------------------


def test_not_yet_authorised_stays_waiting_and_spends_no_insert(env):
    order = waiting_order(env)
    results = env.issue([order], run_id="run-1")
    oid = order.order_id
    assert results[oid].outcome is Outcome.AWAITING_AUTH
    assert "never auth" in results[oid].reason
    row = env.store.get_row(oid)
    assert row["status"] == "awaiting_auth"
    left = (row["not_before"] - datetime.now(UTC)).total_seconds()
    assert AUTHORIZATION_RECHECK_S - 60 < left <= AUTHORIZATION_RECHECK_S
    assert insert_calls(env, oid) == 1  # the first insert's 72038 only
    assert auth_calls(env, oid) == 1
    last = env.store.history(oid)[-1]
    assert (last.step, last.outcome) == ("authorization", "awaiting_auth")
    assert last.errmsg == "never auth"


def answer_then_reissue(env, payer):
    """A waiting order whose payer then `payer`s (the sandbox's getauthdata answers so),
    issued again: its id, its result and its row."""
    order = waiting_order(env)
    env.sandbox.set_authorization(order.order_id, payer)
    oid = order.order_id
    return oid, env.issue([order], run_id="run-1")[oid], env.store.get_row(oid)


def test_refused_by_the_payer_ends_rejected_without_an_insert(env):
    oid, result, row = answer_then_reissue(env, "rejected")
    assert result.outcome is Outcome.REJECTED and row["status"] == "rejected"
    assert "refused the bill" in row["reason"] and "reject insert" in row["reason"]
    assert insert_calls(env, oid) == 1
    assert env.sandbox.bills() == []


def test_authorised_goes_on_to_insert(env):
    oid, result, row = answer_then_reissue(env, "authorized")
    assert result.outcome is Outcome.INSERTED and row["status"] == "inserted"
    assert row["code"] == env.sandbox.bills()[0]["code"]
    assert insert_calls(env, oid) == 2 and auth_calls(env, oid) == 1
    steps = [(a.step, a.outcome) for a in env.store.history(oid)]
    assert steps[-2:] == [("authorization", "authorized"), ("insert", "inserted")]


def test_the_deadline_still_fails_an_order_never_authorised(env):
    order = waiting_order(env)
    env.sql(
        "UPDATE nontax.bill_order SET auth_wait_since = now() - interval '25 hours' "
        "WHERE order_id = %s",
        (order.order_id,),
    )
    results = env.issue([order], run_id="run-1")
    assert results[order.order_id].outcome is Outcome.FAILED
    row = env.store.get_row(order.order_id)
    assert row["status"] == "failed"
    assert "not authorised 25 h" in row["reason"] and "getauthdata: never auth" in row["reason"]
    assert insert_calls(env, order.order_id) == 1


def test_a_failing_getauthdata_is_retried_later_and_never_spends_the_insert(env):
    order = waiting_order(env)
    env.sandbox.set_authorization(order.order_id, "authorized")
    env.sandbox.add_fault(endpoint="getauthdata", kind="http_5xx")
    results = env.issue([order], run_id="run-1", time_budget_s=0)
    oid = order.order_id
    assert results[oid].outcome is Outcome.RETRY_LATER
    assert env.store.get_row(oid)["status"] == "awaiting_auth"
    assert insert_calls(env, oid) == 1
    assert env.store.history(oid)[-1].step == "authorization"
    # Once getauthdata answers again, the run's next try inserts.
    env.sandbox.clear_faults()
    again = env.issue([order], run_id="run-1")
    assert again[oid].outcome is Outcome.INSERTED


def test_a_getauthdata_outage_inside_the_budget_recovers(env):
    order = waiting_order(env)
    env.sandbox.set_authorization(order.order_id, "authorized")
    env.sandbox.add_fault(endpoint="getauthdata", kind="errcode", errcode=-1, count=2)
    results = env.issue([order], run_id="run-1")
    assert results[order.order_id].outcome is Outcome.INSERTED
    assert env.sandbox.order_answers(order.order_id)["getauthdata"] == {"-1": 2, "0": 1}


# -- daily quotas, shared ----------------------------------------------------------------------


def quota_rows(env):
    return env.sql("SELECT appid, api, errcode, stopped_until FROM nontax.api_quota ORDER BY api")


def test_the_insert_limit_stops_every_later_batch_until_beijing_midnight(env):
    env.sandbox.configure(daily_insert_limit=2)
    first = env.orders(5)
    results = env.issue(first, max_workers=1)
    outcomes = [results[o.order_id].outcome for o in first]
    assert outcomes == [Outcome.INSERTED] * 2 + [Outcome.QUOTA] * 3
    [(appid, api, errcode, until)] = quota_rows(env)
    assert (appid, api, errcode) == (DEFAULT_APPID, "insert", 72057)
    midnight = next_beijing_midnight(datetime.now(UTC))
    assert abs((until - midnight).total_seconds() - 60) < 5  # plus a minute for clock skew
    # Every order not sent waits for midnight, the quota named in its history.
    for order in first[2:]:
        row = env.store.get_row(order.order_id)
        assert row["status"] in {"authorized", "uploaded"} and row["last_errcode"] == 72057
        assert abs((row["not_before"] - until).total_seconds()) < 5
        last = env.store.history(order.order_id)[-1]
        assert last.outcome == "quota" and "daily quota of insert used up" in last.errmsg
    calls = env.sandbox.calls()
    assert (calls["insertbill"], calls["setpdf"]) == (3, 3)
    # Another run's batch: not one call (no upload either: its insert could not follow).
    second = env.orders(4, start=10)
    again = env.issue(second, run_id="run-2")
    assert {r.outcome for r in again.values()} == {Outcome.QUOTA}
    assert env.sandbox.calls() == calls
    assert env.token_fetches() == 1


def test_bad_data_after_a_quota_stop_still_ends_invalid_at_once(env):
    env.sandbox.configure(daily_insert_limit=1)
    good = env.orders(2)
    bad = make_order(50, title="")
    write_pdf(env.pdf_root, bad)
    env.store.upsert_orders([bad])
    results = env.issue([*good, bad], max_workers=1)
    assert [results[o.order_id].outcome for o in (*good, bad)] == [
        Outcome.INSERTED, Outcome.QUOTA, Outcome.INVALID,
    ]  # fmt: skip
    assert env.store.get_row(bad.order_id)["status"] == "invalid"


@pytest.mark.parametrize("answer", ["45009", "72057"])
def test_two_batches_at_once_share_the_stop(env, answer):
    """The second batch holds its orders and is working when the first gets the quota answer:
    it makes no call after that, as the sandbox's per-order answers show."""
    first = env.orders(4)
    second = env.orders(4, start=10)
    # The first batch's first order is inserted, its second gets the quota answer.
    if answer == "45009":
        env.sandbox.add_fault(
            endpoint="insertbill", kind="errcode", errcode=45009, order_ids=[first[1].order_id]
        )
    else:
        env.sandbox.configure(daily_insert_limit=1)
    stopped = threading.Event()

    def read_after_the_stop(root, rel, limit):
        # The second batch's first step, held until the first batch's stop is on record.
        deadline = time.monotonic() + 20
        while not quota_rows(env) and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped.set()
        return (env.pdf_root / rel).read_bytes()

    second_results = {}

    def run_second():
        issuer = env.issuer(run_id="run-2", reader=read_after_the_stop, max_workers=4)
        second_results.update({r.order_id: r for r in issuer.run([o.order_id for o in second])})

    thread = threading.Thread(target=run_second)
    thread.start()
    try:
        first_results = env.issue(first, run_id="run-1", max_workers=1)
    finally:
        thread.join(timeout=60)
    assert stopped.is_set()
    assert [first_results[o.order_id].outcome for o in first] == [Outcome.INSERTED] + [
        Outcome.QUOTA
    ] * 3
    assert {r.outcome for r in second_results.values()} == {Outcome.QUOTA}
    for order in second:
        assert env.sandbox.order_answers(order.order_id) == {}
    calls = env.sandbox.calls()
    assert (calls["insertbill"], calls["setpdf"]) == (2, 2)  # the first batch's two orders
    [(_, api, errcode, _)] = quota_rows(env)
    assert (api, str(errcode)) == ("insert", answer)
    assert env.sandbox.order_answers(first[1].order_id)["insertbill"] == {answer: 1}


def test_a_quota_stop_of_another_appid_stops_nothing(env):
    env.sql(
        "INSERT INTO nontax.api_quota (appid, api, stopped_until, errcode) "
        "VALUES ('wxOtherAccount', 'insert', now() + interval '1 hour', 45009)"
    )
    orders = env.orders(3)
    results = env.issue(orders)
    assert {r.outcome for r in results.values()} == {Outcome.INSERTED}


def test_a_stop_past_midnight_is_forgotten(env):
    env.sql(
        "INSERT INTO nontax.api_quota (appid, api, stopped_until, errcode) "
        "VALUES (%s, 'insert', now() - interval '1 second', 72057)",
        (DEFAULT_APPID,),
    )
    orders = env.orders(2)
    results = env.issue(orders)
    assert {r.outcome for r in results.values()} == {Outcome.INSERTED}


def test_a_later_answer_never_shortens_a_stop(env):
    store = env.store
    long = store.record_quota_stop(
        DEFAULT_APPID, "upload", seconds=7200, errcode=45009, errmsg="a", run_id="r1"
    )
    short = store.record_quota_stop(
        DEFAULT_APPID, "upload", seconds=60, errcode=45009, errmsg="b", run_id="r2"
    )
    assert short.until == long.until
    assert set(store.quota_stops(DEFAULT_APPID, ["upload", "insert"])) == {"upload"}
    assert env.sql("SELECT stop_count FROM nontax.api_quota")[0][0] == 2


# -- the token endpoint ------------------------------------------------------------------------


def test_token_endpoint_5xx_twice_then_ok_the_batch_completes(env):
    orders = env.orders(10)
    env.sandbox.add_fault(endpoint="stable_token", kind="http_5xx", count=2)
    slept = []
    results = env.issue(orders, sleep=slept.append)
    assert {r.outcome for r in results.values()} == {Outcome.INSERTED}
    assert len(env.sandbox.bills()) == 10
    assert env.sandbox.calls()["stable_token"] == 3
    assert env.token_fetches() == 1
    assert slept and all(0 < s <= 30 for s in slept)  # backoff, not a busy loop


def test_a_busy_token_endpoint_is_retried(env):
    orders = env.orders(3)
    env.sandbox.add_fault(endpoint="stable_token", kind="errcode", errcode=-1, count=2)
    results = env.issue(orders)
    assert {r.outcome for r in results.values()} == {Outcome.INSERTED}
    assert env.sandbox.calls()["stable_token"] == 3


def test_a_token_endpoint_down_past_the_budget_leaves_the_batch_due_not_blocked(env):
    orders = env.orders(3)
    env.sandbox.add_fault(endpoint="stable_token", kind="http_5xx")
    results = env.issue(orders, time_budget_s=0)
    assert {r.outcome for r in results.values()} == {Outcome.RETRY_LATER}
    assert "no access token within the task's time budget" in results[orders[0].order_id].reason
    assert set(env.store.count_by_status()) == {"authorized"}
    assert env.sandbox.calls()["setpdf"] == 0


def test_a_wrong_secret_still_blocks_the_batch(env):
    orders = env.orders(2)
    env.sandbox.add_fault(endpoint="stable_token", kind="errcode", errcode=40125)
    results = env.issue(orders)
    assert {r.outcome for r in results.values()} == {Outcome.BLOCKED}


def test_a_daily_quota_of_the_token_endpoint_is_shared_too(env):
    orders = env.orders(3)
    env.sandbox.add_fault(endpoint="stable_token", kind="errcode", errcode=45009, count=1)
    results = env.issue(orders)
    assert {r.outcome for r in results.values()} == {Outcome.QUOTA}
    assert [(api, errcode) for _, api, errcode, _ in quota_rows(env)] == [("token", 45009)]
    # No token is cached: the next batch would have to fetch one; it does not even ask.
    again = env.issue(env.orders(2, start=10), run_id="run-2")
    assert {r.outcome for r in again.values()} == {Outcome.QUOTA}
    assert env.sandbox.calls()["stable_token"] == 1


def test_make_status_names_the_quota_stops_in_force(env, capsys):
    from wechat_nontax.cli.main import main

    env.store.record_quota_stop(
        DEFAULT_APPID, "insert", seconds=3600, errcode=72057, errmsg="limit", run_id="r"
    )
    env.sql(
        "INSERT INTO nontax.api_quota (appid, api, stopped_until) "
        "VALUES ('wxOld', 'upload', now() - interval '1 minute')"
    )
    assert main(["--dsn", env.dsn, "status"]) == 0
    out = capsys.readouterr().out
    assert f"daily quota of insert used up for {DEFAULT_APPID} (errcode 72057)" in out
    assert "wxOld" not in out


def test_the_token_step_asks_again_through_a_passing_outage(env):
    from wechat_nontax.issuing.run_steps import warm_token

    env.sandbox.add_fault(endpoint="stable_token", kind="http_5xx", count=2)
    slept = []
    assert "3 tries" in warm_token(wechat_conn_id="wechat_nontax_default", sleep=slept.append)
    assert len(slept) == 2 and env.token_fetches() == 1


def test_the_token_step_gives_up_past_its_budget_and_at_once_on_a_wrong_secret(env):
    from wechat_nontax.issuing.run_steps import warm_token
    from wechat_nontax.wechat import errors

    env.sandbox.add_fault(endpoint="stable_token", kind="http_5xx", count=1)
    with pytest.raises(errors.RetryableError):
        warm_token(wechat_conn_id="wechat_nontax_default", budget_s=0, sleep=pytest.fail)
    env.sandbox.add_fault(endpoint="stable_token", kind="errcode", errcode=40125, count=1)
    with pytest.raises(errors.PermanentError):
        warm_token(wechat_conn_id="wechat_nontax_default", sleep=pytest.fail)
    assert env.sandbox.calls()["stable_token"] == 2


def test_a_stop_another_batch_records_is_seen_within_the_recheck(env):
    """The quota record is read once per batch and QUOTA_RECHECK_S, not before every call: a
    stop recorded elsewhere mid-batch stops this batch's inserts within that half-second."""
    from wechat_nontax.issuing.batch_quotas import QUOTA_RECHECK_S

    orders = env.orders(12)
    env.sandbox.add_fault(endpoint="insertbill", kind="latency", latency_ms=200)
    results = {}
    batch = threading.Thread(target=lambda: results.update(env.issue(orders, max_workers=1)))
    batch.start()
    try:
        deadline = time.monotonic() + 20
        while env.sandbox.calls().get("insertbill", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        env.store.record_quota_stop(
            DEFAULT_APPID, "insert", seconds=600, errcode=45009, errmsg="elsewhere", run_id="r0"
        )
        inserts_at_stop = env.sandbox.calls()["insertbill"]
    finally:
        batch.join()
    # One order's insert may be past its check, and one more before the next read (each
    # order takes at least the 200 ms insert).
    late = env.sandbox.calls()["insertbill"] - inserts_at_stop
    assert late <= 1 + int(QUOTA_RECHECK_S / 0.2)
    outcomes = [results[o.order_id].outcome for o in orders]
    assert outcomes.count(Outcome.QUOTA) >= 12 - inserts_at_stop - late
    assert set(outcomes) == {Outcome.INSERTED, Outcome.QUOTA}


def test_a_getauthdata_quota_answer_stops_only_getauthdata(env):
    """A batch with a waiting order (asked getauthdata first) and authorised ones: a daily
    quota answer to getauthdata leaves that order waiting for the quota; every authorised
    order of the batch is still inserted, and the next batch too (only getauthdata is off)."""
    waiting = waiting_order(env, n=100)
    env.sandbox.add_fault(endpoint="getauthdata", kind="errcode", errcode=45009, count=1)
    authorised = env.orders(30)
    results = env.issue([waiting, *authorised], max_workers=1)
    assert results[waiting.order_id].outcome is Outcome.QUOTA
    assert "daily quota of authorization used up" in results[waiting.order_id].reason
    assert {results[o.order_id].outcome for o in authorised} == {Outcome.INSERTED}
    assert [(api, errcode) for _, api, errcode, _ in quota_rows(env)] == [("authorization", 45009)]
    row = env.store.get_row(waiting.order_id)
    assert row["status"] == "awaiting_auth" and row["last_errcode"] == 45009
    calls = env.sandbox.calls()
    assert (calls["getauthdata"], calls["insertbill"]) == (1, 31)  # 72038 once, then 30
    # Another waiting order is not asked before midnight; an authorised one goes in.
    later = waiting_order(env, n=200)
    more = env.orders(2, start=50)
    again = env.issue([later, *more], run_id="run-2", max_workers=1)
    assert again[later.order_id].outcome is Outcome.QUOTA
    assert {again[o.order_id].outcome for o in more} == {Outcome.INSERTED}
    assert env.sandbox.calls()["getauthdata"] == 1


def test_a_getauthdata_busy_past_its_retries_fails_with_its_own_hint(env):
    """-1 is a busy answer; after the insert a repeated one may be a bad billing_no, after
    getauthdata it cannot be (getauthdata names only the order): the reason says what to check
    for that call."""
    order = waiting_order(env)
    env.sandbox.add_fault(endpoint="getauthdata", kind="errcode", errcode=-1, count=4)
    results = env.issue([order], run_id="run-1")
    oid = order.order_id
    assert results[oid].outcome is Outcome.FAILED
    row = env.store.get_row(oid)
    assert row["status"] == "failed" and row["last_errcode"] == -1
    assert "getauthdata" in row["reason"] and "billing_no" not in row["reason"]
    assert env.sandbox.order_answers(oid)["getauthdata"] == {"-1": 4}
    assert insert_calls(env, oid) == 1  # the first insert's 72038 only


def test_the_claim_takes_waiting_orders_whose_look_is_due_never_those_of_unpaid_payers(env):
    due_look = waiting_order(env, n=100)
    not_yet = waiting_order(env, n=101)
    env.sql(
        "UPDATE nontax.bill_order SET not_before = now() + interval '10 minutes' "
        "WHERE order_id = %s",
        (not_yet.order_id,),
    )
    authorised = env.orders(3)
    unauthorized = env.orders(1, start=200)[0]
    env.sql("UPDATE nontax.bill_order SET status = 'unauthorized' WHERE order_id = %s",
            (unauthorized.order_id,))  # fmt: skip
    expected = sorted([due_look.order_id, *(o.order_id for o in authorised)])
    assert sorted(env.store.peek_due().order_ids) == expected
    asked = [due_look.order_id, not_yet.order_id, unauthorized.order_id]
    claim = env.store.claim_run("run-w", lease_s=60, split=lambda c: [c] if c else [],
                                order_ids=asked)  # fmt: skip
    assert claim.order_ids == [due_look.order_id]
    reasons = {n["order_id"]: n["reason"] for n in claim.not_taken}
    assert "not due for another" in reasons[not_yet.order_id]
    assert "has not authorised it yet" in reasons[unauthorized.order_id]
