"""Which request fits which order, and what is wrong with a request as asked (pure)."""

from __future__ import annotations

import pytest

from wechat_nontax.requests.contract import ACTS_ON, check_request, why_not_carried_out
from wechat_nontax.wechat.statuses import Status


@pytest.mark.parametrize("status", sorted((Status.DUE | Status.NEEDS_ATTENTION) - Status.SETTLED))
def test_an_order_without_a_bill_can_be_refused_but_not_voided(status):
    assert why_not_carried_out("refuse", status) is None
    assert "refuse the order instead" in why_not_carried_out("void", status)


@pytest.mark.parametrize(
    ("kind", "status", "words"),
    [
        ("refuse", "inserted", "void the bill instead"),
        ("refuse", "mismatched", "void the bill instead"),
        ("refuse", "duplicate", "void it in WeChat's back office"),
        ("refuse", "rejected", "nothing left to refuse"),
        ("refuse", "refused", "refused already"),
        ("refuse", "cancelled", "cannot be refused"),
        ("void", "cancelled", "voided already"),
        ("void", "duplicate", "code is unknown"),
        ("void", "refused", "nothing to void"),
        ("void", "rejected", "nothing to void"),
        ("void", None, "unknown order"),
    ],
)
def test_a_request_the_orders_status_does_not_allow_says_why(kind, status, words):
    assert words in why_not_carried_out(kind, status)


def test_only_an_order_with_a_known_code_can_be_voided_and_every_status_has_an_answer():
    assert ACTS_ON["void"] == {Status.INSERTED, Status.MISMATCHED}
    for kind in ACTS_ON:
        for status in Status:
            reason = why_not_carried_out(kind, status)
            assert (reason is None) == (status in ACTS_ON[kind])


@pytest.mark.parametrize(
    ("kind", "reason", "by", "words"),
    [
        ("refuse", "refunded", "duty", None),
        ("void", "退" * 100, "his", None),
        ("refuse", "退" * 101, "duty", "at most 100 characters"),
        ("refuse", "", "duty", "must not be empty"),
        ("refuse", "a\tb", "duty", "control or invisible"),
        ("refuse", None, "duty", "must be text"),
        ("lock", "x", "duty", "kind must be one of"),
        ("void", "x", "", "requested_by"),
    ],
)
def test_a_request_is_checked_before_its_order_is_looked_at(kind, reason, by, words):
    problem = check_request(kind, reason, by)
    assert (problem is None) if words is None else (words in problem)
