"""The errcodes of the facts' "After the insert" (meanings as reported, actions our choice, kept in
`rules.POLICY`): each one reaching an order's row through the sandbox.

The sandbox answers 72057 by itself (its daily insert limit); the others are injected on
insertbill through its fault API, as WeChat would answer them there.
"""

from __future__ import annotations

import pytest

from wechat_nontax.issuing.outcomes import Outcome
from wechat_nontax.wechat.rules import INSERT_IN_PROGRESS_LIMIT, INSERT_IN_PROGRESS_WAIT_S


def inserts(env, order_id):
    return env.sandbox.order_answers(order_id).get("insertbill", {})


@pytest.mark.parametrize(
    ("errcode", "words"),
    [
        (72048, "authorise it again"),
        (72060, "red-reversed"),
        (72061, "written off"),
        (72082, "PDF"),
    ],
)
def test_a_final_answer_fails_the_order_with_its_reason_and_no_second_call(env, errcode, words):
    [order] = env.orders(1)
    env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=errcode)
    results = env.issue([order])
    oid = order.order_id
    assert results[oid].outcome is Outcome.FAILED
    row = env.store.get_row(oid)
    assert row["status"] == "failed" and row["last_errcode"] == errcode
    assert words in row["reason"] and f"errcode {errcode}" in row["reason"]
    assert inserts(env, oid) == {str(errcode): 1}
    last = env.store.history(oid)[-1]
    assert (last.step, last.errcode) == ("insert", errcode)


def test_72054_inserting_is_asked_again_after_a_wait_then_inserted(env):
    [order] = env.orders(1)
    env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=72054, count=2)
    slept = []
    results = env.issue([order], sleep=slept.append)
    assert results[order.order_id].outcome is Outcome.INSERTED
    assert inserts(env, order.order_id) == {"72054": 2, "0": 1}
    assert slept == [INSERT_IN_PROGRESS_WAIT_S] * 2
    assert [a.outcome for a in env.store.history(order.order_id)][-3:] == [
        "retry",
        "retry",
        "inserted",
    ]


def test_72054_for_ever_fails_after_its_limit(env):
    [order] = env.orders(1)
    env.sandbox.add_fault(endpoint="insertbill", kind="errcode", errcode=72054)
    results = env.issue([order], time_budget_s=600)
    oid = order.order_id
    assert results[oid].outcome is Outcome.FAILED
    row = env.store.get_row(oid)
    assert row["status"] == "failed"
    assert f"{INSERT_IN_PROGRESS_LIMIT + 1} times in a row" in row["reason"]
    assert inserts(env, oid) == {"72054": INSERT_IN_PROGRESS_LIMIT + 1}


def test_72057_the_sandboxs_insert_limit_leaves_the_order_waiting_for_midnight(env):
    env.sandbox.configure(daily_insert_limit=1)
    orders = env.orders(2)
    results = env.issue(orders, max_workers=1)
    late = orders[1].order_id
    assert results[late].outcome is Outcome.QUOTA
    row = env.store.get_row(late)
    assert row["status"] == "uploaded" and row["last_errcode"] == 72057
    assert row["not_before"] is not None and row["reason"] is None
    assert inserts(env, late) == {"72057": 1}
    assert env.sql("SELECT api, errcode FROM nontax.api_quota") == [("insert", 72057)]
