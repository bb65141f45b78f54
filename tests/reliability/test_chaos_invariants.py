"""The chaos runner's own logic, without I/O: its plans are reproducible and valid for the sandbox,
and its invariant checker catches each way the promise can break (a checker that cannot fail
proves nothing)."""

from __future__ import annotations

import pytest

from nontax_dev.chaos.checks import IN_FLIGHT_S, Snapshot, check_invariants
from nontax_dev.chaos.plan import FAULT_KINDS, plan_run
from wechat_sandbox.faults import parse_rule


def test_a_plan_is_reproducible_from_seed_and_run():
    assert plan_run(1, 7) == plan_run(1, 7)
    assert plan_run(1, 7) != plan_run(2, 7)


def test_plans_use_fresh_ids_every_fault_kind_and_rules_the_sandbox_accepts():
    plans = [plan_run(1, run) for run in range(200)]
    ids = [oid for plan in plans for oid in plan.order_ids]
    assert len(ids) == len(set(ids))
    kinds = {kind for plan in plans for kind, _ in plan.faults}
    assert kinds == {*FAULT_KINDS, "request_quota"}
    for plan in plans:
        assert 16 <= len(plan.order_ids) <= 32
        assert {oid for oid, _ in plan.bad} <= set(plan.order_ids)
        for _, rule in plan.faults:
            parse_rule(rule, 1)  # raises on a rule the sandbox would refuse
            assert set(rule.get("order_ids") or []) <= set(plan.order_ids)


def _snapshot(**changes) -> Snapshot:
    bill = {"order_id": "A", "code": "1234567890123", "openid": "o" + "x" * 27}
    values = {
        "order_ids": ["A", "B", "C"],
        "rows": {
            "A": {
                "status": "inserted",
                "code": bill["code"],
                "openid": bill["openid"],
                "reason": None,
                "waiting": False,
                "held": False,
                "inserted_records": 1,
            },
            "B": {
                "status": "invalid",
                "reason": "fee: must be positive",
                "waiting": False,
                "held": False,
                "inserted_records": 0,
            },
            "C": {
                "status": "awaiting_auth",
                "reason": "not yet",
                "waiting": True,
                "held": False,
                "inserted_records": 0,
            },
        },
        "bills": [bill],
        "sandbox_orders": {"A": {"attempts": 1, "successes": 1}},
        "uploaded_names": {"A.pdf"},
        "tokens_issued": 1,
        "token_fetches": 1,
        "token_expiries": 0,
        "bad_orders": {"B"},
        "final": True,
    }
    values.update(changes)
    return Snapshot(**values)


def test_a_consistent_snapshot_has_no_violation():
    assert check_invariants(_snapshot()) == []


def _with_row(order_id: str, **fields):
    rows = {k: dict(v) for k, v in _snapshot().rows.items()}
    rows[order_id].update(fields)
    return rows


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"sandbox_orders": {"A": {"attempts": 2, "successes": 2}}}, "inserted 2 times"),
        ({"bills": [_snapshot().bills[0]] * 2}, "2 bills"),
        ({"rows": _with_row("A", code="999")}, "code/openid differ"),
        ({"rows": _with_row("A", inserted_records=2)}, "'inserted' history rows"),
        ({"bills": []}, "no bill in the sandbox"),
        ({"rows": _with_row("C", status="duplicate", reason="dup")}, "duplicate in the database"),
        ({"rows": _with_row("B", status="failed", reason="")}, "without a reason"),
        ({"rows": _with_row("B", status="failed")}, "bad data, but failed"),
        (
            {"sandbox_orders": {"A": {"attempts": 1, "successes": 1}, "B": {"attempts": 1}}},
            "insertbill was called",
        ),
        ({"uploaded_names": {"A.pdf", "B.pdf"}}, "its PDF was uploaded"),
        ({"rows": _with_row("C", waiting=False)}, "stuck"),
        ({"rows": _with_row("C", held=True)}, "lease is still held"),
        ({"rows": _with_row("C", status="weird")}, "unknown status"),
        ({"rows": {"A": _snapshot().rows["A"], "B": _snapshot().rows["B"]}}, "missing"),
        ({"token_fetches": 2}, "2 token fetches for 0 expiries"),
        ({"tokens_issued": 3, "token_fetches": 3, "token_expiries": 1}, "issued 3 tokens"),
        ({"secret_hits": 1}, "secret"),
        (
            {"bills": [*_snapshot().bills, {"order_id": "Z", "code": "1", "openid": "o"}]},
            "order of no run",
        ),
    ],
)
def test_each_broken_promise_is_a_violation(changes, words):
    violations = check_invariants(_snapshot(**changes))
    assert any(words in v for v in violations), violations


def test_a_failed_order_with_a_bill_is_tolerated_mid_chaos_but_not_at_the_end():
    bill_b = {"order_id": "B", "code": "1", "openid": "o"}
    rows = _with_row("B", status="failed", reason="-1 four times")
    mid = _snapshot(rows=rows, bills=[_snapshot().bills[0], bill_b], bad_orders=set(), final=False)
    assert check_invariants(mid) == []
    end = _snapshot(rows=rows, bills=[_snapshot().bills[0], bill_b], bad_orders=set())
    assert any("WeChat has its bill" in v for v in check_invariants(end))


def test_expiries_allow_one_more_fetch_each():
    assert check_invariants(_snapshot(token_fetches=3, tokens_issued=3, token_expiries=2)) == []


def test_plans_draw_refusals_and_voids_of_good_orders_only():
    plans = [plan_run(1, run) for run in range(200)]
    kinds = [kind for plan in plans for _, kind in plan.requests]
    assert kinds.count("refuse") > 20 and kinds.count("void") > 20
    for plan in plans:
        asked = [oid for oid, _ in plan.requests]
        taken = {oid for oid, _ in plan.bad} | {oid for oid, _ in plan.authorizations}
        assert len(asked) == len(set(asked)) and not set(asked) & taken


def test_plans_draw_refusals_during_the_batches_of_the_orders_the_batches_reach_last():
    plans = [plan_run(1, run) for run in range(200)]
    drawn = [plan for plan in plans if plan.refused_mid_batch]
    assert 40 < len(drawn) < 80
    for plan in drawn:
        others = (
            {oid for oid, _ in plan.bad} | {oid for oid, _ in plan.authorizations}
            | {oid for oid, _ in plan.payers_later} | {oid for oid, _ in plan.requests}
        )  # fmt: skip
        assert not set(plan.refused_mid_batch) & others
        assert set(plan.refused_mid_batch) <= set(plan.order_ids[len(plan.order_ids) // 3 :])


def test_an_insert_arriving_after_the_orders_refusal_was_asked_is_a_violation():
    log = [_call(10.0, "insertbill", "C", 0), _call(10.0 + IN_FLIGHT_S, "insertbill", "C", 0)]
    assert check_invariants(_snapshot(call_log=log, refusals_asked={"C": 10.0})) == []
    log.append(_call(10.1 + IN_FLIGHT_S, "insertbill", "C", 0))
    violations = check_invariants(_snapshot(call_log=log, refusals_asked={"C": 10.0}))
    assert violations == ["C: 1 insertbill calls after its refusal was asked"]


def _refused_and_cancelled(**changes) -> Snapshot:
    """C refused on request, A's bill voided: both carried out once."""
    rows = _with_row("C", status="refused", reason="refuse #1: refunded", waiting=False)
    rows["A"]["status"] = "cancelled"
    rows["A"]["reason"] = "void #2: 冲红"
    values = {
        "rows": rows,
        "requests": {"C": [("refuse", "done")], "A": [("void", "done")]},
        "rejections": {"C": 0},
        "reimburse": {"A": ("INVOICE_REIMBURSE_CANCEL", 1)},
    }
    values.update(changes)
    return _snapshot(**values)


def test_a_refusal_and_a_void_carried_out_once_keep_every_promise():
    assert check_invariants(_refused_and_cancelled()) == []


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"rejections": {}}, "no refusal on WeChat"),
        (
            {"bills": [*_snapshot().bills, {"order_id": "C", "code": "2", "openid": "o"}]},
            "refused, yet WeChat has its bill",
        ),
        ({"reimburse": {"A": ("INVOICE_REIMBURSE_INIT", 0)}}, "cancelled in the database"),
        ({"reimburse": {"A": ("INVOICE_REIMBURSE_CANCEL", 2)}}, "voided 2 times"),
        ({"bills": []}, "cancelled, but WeChat never had its bill"),
        (
            {"requests": {"C": [("refuse", "done"), ("refuse", "done")], "A": [("void", "done")]}},
            "2 refuse requests done",
        ),
        (
            {
                "requests": {
                    "C": [("refuse", "done")],
                    "A": [("void", "done")],
                    "B": [("void", "done")],
                }
            },
            "its void is done, yet it is invalid",
        ),
    ],
)
def test_each_broken_promise_of_a_request_is_a_violation(changes, words):
    violations = check_invariants(_refused_and_cancelled(**changes))
    assert any(words in v for v in violations), violations


# ---------------------------------------------------------------- calls after a "no"


def _call(at, endpoint, order_id=None, errcode=0, invoice_status=None):
    call = {"at": at, "endpoint": endpoint, "order_id": order_id, "errcode": errcode}
    if invoice_status is not None:
        call["invoice_status"] = invoice_status
    return call


def test_plans_put_both_dags_at_one_run_id_now_and_then():
    plans = [plan_run(1, run) for run in range(200)]
    assert 20 <= sum(plan.same_run_id for plan in plans) <= 80


def test_plans_draw_late_payers_and_insert_limits_within_their_orders():
    plans = [plan_run(1, run) for run in range(200)]
    answers = {answer for plan in plans for _, answer in plan.payers_later}
    assert answers == {"authorized", "rejected"}
    assert any(plan.insert_limit for plan in plans)
    for plan in plans:
        firsts = plan.first_authorizations
        assert set(firsts) <= set(plan.order_ids)
        assert {oid for oid, _ in plan.payers_later} <= {
            oid for oid, status in firsts.items() if status == "unauthorized"
        }
        assert not {oid for oid, _ in plan.bad} & set(firsts)
        if plan.insert_limit is not None:
            assert 1 <= plan.insert_limit < len(plan.order_ids)


def test_an_insert_after_never_auth_is_a_violation_until_auth_success():
    log = [
        _call(1.0, "insertbill", "C", 72038),
        _call(2.0, "getauthdata", "C", invoice_status="never auth"),
        _call(3.0, "insertbill", "C", 72038),
    ]
    violations = check_invariants(_snapshot(call_log=log))
    assert any("C: insertbill after getauthdata said 'never auth'" in v for v in violations)
    log[2:2] = [_call(2.5, "getauthdata", "C", invoice_status="auth success")]
    assert check_invariants(_snapshot(call_log=log)) == []


def test_an_insert_after_reject_insert_is_a_violation():
    log = [
        _call(2.0, "getauthdata", "C", invoice_status="reject insert"),
        _call(2.1, "getauthdata", "C", errcode=None),  # a 5xx says nothing new
        _call(3.0, "insertbill", "C", 72035),
    ]
    violations = check_invariants(_snapshot(call_log=log))
    assert any("said 'reject insert'" in v for v in violations)


def test_a_call_after_the_recorded_quota_stop_is_a_violation_past_the_in_flight_margin():
    log = [
        _call(10.0, "insertbill", "A", 72057),
        _call(10.5, "insertbill", "C", 0),  # past its check before the stop was recorded
        _call(11.0, "setpdf"),  # another API: its quota is not stopped
    ]
    assert check_invariants(_snapshot(call_log=log, quota_stops=[("insert", 10.1)])) == []
    log.append(_call(10.1 + IN_FLIGHT_S + 0.1, "insertbill", "C", 0))
    violations = check_invariants(_snapshot(call_log=log, quota_stops=[("insert", 10.1)]))
    assert any("1 insertbill calls after the insert quota stop" in v for v in violations)
    token = [_call(20.0 + IN_FLIGHT_S, "stable_token")]
    violations = check_invariants(_snapshot(call_log=token, quota_stops=[("token", 15.0)]))
    assert any("stable_token/token calls after the token quota stop" in v for v in violations)


def test_the_summary_says_each_thing_once_on_a_line_of_its_own():
    from collections import Counter

    from nontax_dev.chaos.report import Summary

    text = str(
        Summary(
            runs=2, orders=40, faults_injected=3, fault_kinds=Counter({"http_5xx": 3}),
            violations=0, secret_occurrences=0, seconds=9.0,
            statuses=Counter({"inserted": 30, "authorized": 10}),
            requests_done=Counter({"refuse": 1, "void": 2}), quota_waiting=10,
        )
    )  # fmt: skip
    lines = text.splitlines()
    assert "requests carried out: refuse 1, void 2" in lines
    assert lines[-1] == (
        "orders by final status: authorized 10, inserted 30 (10 of the due ones waiting for a "
        "daily quota's reset)"
    )
    assert text.count("orders by final status") == 1


def test_plans_draw_quota_answers_to_requests_and_to_getauthdata_where_they_can_hit():
    plans = [plan_run(1, run) for run in range(200)]
    asked = [plan for plan in plans if any(k == "request_quota" for k, _ in plan.faults)]
    assert asked
    for plan in asked:
        [rule] = [rule for kind, rule in plan.faults if kind == "request_quota"]
        kind = {"rejectinsert": "refuse", "updatestatus": "void"}[rule["endpoint"]]
        assert kind in {k for _, k in plan.requests} and rule["errcode"] == 45009
    looked = [plan for plan in plans if plan.auth_quota]
    assert looked
    for plan in plans:
        assert bool(plan.held_back) is plan.auth_quota
        others = {o for o, _ in (*plan.bad, *plan.requests)} | set(plan.first_authorizations)
        assert set(plan.held_back) <= set(plan.order_ids) and not set(plan.held_back) & others
        assert set(plan.first_conf["order_ids"]) == set(plan.order_ids) - set(plan.held_back)
    assert all("unauthorized" in plan.first_authorizations.values() for plan in looked)


def test_a_quota_answer_to_a_request_not_recorded_is_a_violation():
    log = [_call(1.0, "rejectinsert", "C", 45009), _call(2.0, "rejectinsert", "C", 45009)]
    violations = check_invariants(_snapshot(call_log=log))
    assert "2 daily quota answers of refuse, none recorded" in violations
    assert check_invariants(_snapshot(call_log=log[:1], quota_stops=[("refuse", 1.1)])) == []
    later = [*log[:1], _call(1.1 + IN_FLIGHT_S + 1, "rejectinsert", "B", 0)]
    violations = check_invariants(_snapshot(call_log=later, quota_stops=[("refuse", 1.1)]))
    assert any("rejectinsert calls after the refuse quota stop" in v for v in violations)


def test_an_authorised_order_waiting_for_getauthdatas_quota_is_a_violation():
    snapshot = _snapshot()
    snapshot.rows["C"]["quota_api"] = "authorization"
    assert check_invariants(snapshot) == []  # waiting for its payer: it needs getauthdata
    snapshot.rows["C"]["status"] = "authorized"
    assert check_invariants(snapshot) == ["C: authorized, yet waits for getauthdata's daily quota"]
