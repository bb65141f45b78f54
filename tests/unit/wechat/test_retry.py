"""The retry loop's budget and wait (`wechat.retry.Backoff`), on a fake clock."""

from __future__ import annotations

import pytest

from wechat_nontax.wechat.retry import Backoff
from wechat_nontax.wechat.rules import Rule
from wechat_nontax.wechat.statuses import Action
from wechat_nontax.wechat.timing import delay_until_next_minute


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_fixed_delay_is_waited_while_the_budget_lasts():
    clock = FakeClock()
    backoff = Backoff(clock() + 5.0, clock=clock, sleep=clock.sleep, jitter=lambda: 0.5)
    rule = Rule(Action.RETRY, "busy", "retry", retry_delay_s=2.0)
    assert [backoff.wait(backoff.delay(rule, n)) for n in (1, 2, 3)] == [True, True, False]
    assert clock.slept == [2.0, 2.0]


@pytest.mark.parametrize(("budget_s", "fits"), [(3.0, True), (2.999, False)])
def test_a_wait_fits_only_inside_the_budget(budget_s, fits):
    clock = FakeClock()
    backoff = Backoff(clock() + budget_s, clock=clock, sleep=clock.sleep)
    assert backoff.fits(3.0) is fits
    assert backoff.wait(3.0) is fits
    assert clock.slept == ([3.0] if fits else [])


def test_backoff_delay_is_the_rules_own():
    clock = FakeClock()
    backoff = Backoff(clock() + 60.0, clock=clock, sleep=clock.sleep, jitter=lambda: 0.25)
    rule = Rule(Action.RETRY, "-1", "retry with backoff")
    assert [backoff.delay(rule, n) for n in (1, 2, 3)] == [
        rule.delay_s(n, now=clock(), jitter=0.25) for n in (1, 2, 3)
    ]


def test_a_wall_clock_is_what_the_next_minute_counts_from():
    monotonic = FakeClock(now=5.0)
    backoff = Backoff(
        monotonic() + 120.0, clock=monotonic, sleep=monotonic.sleep, wall=lambda: 1_700_000_030.0
    )
    rule = Rule(Action.RETRY, "45009", "next minute", until_next_minute=True)
    assert backoff.delay(rule, 1) == delay_until_next_minute(1_700_000_030.0)
