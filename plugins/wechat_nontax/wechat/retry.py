"""The policy-driven retry loop's one protocol: an answer that may pass is asked again after
its rule's delay (`rules.Rule.delay_s`: fixed, into the next minute, or exponential backoff
with jitter) while a time budget lasts; past it the caller gives up with its own reason.

Each pipeline keeps what only it knows around the loop (which answers it counts and how, what
it writes before waiting, what giving up means for its orders); the delay, the budget and the
wait are here. Plain arithmetic over an injected clock, sleep and jitter, tested without I/O.

Not tenacity (which Airflow brings): its `Retrying` owns the loop, while here each pipeline does
its own work between an answer and the wait (a batch counts the answers by errcode against the
rule's limit and writes the answer into the order's history before it waits, then checks its
hold and the day's quotas before the next call), and the wait comes from the errcode's rule and
that count (into the next minute for a per-minute limit). All of it would become callbacks
around tenacity's loop, longer than the three methods below.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from wechat_nontax.wechat.rules import Rule


@dataclass
class Backoff:
    """Waits between the calls of one task try, within its time budget (`deadline`, on
    `clock`). `wall` is the time a rule that waits into the next minute counts from: the
    clock itself unless the clock is not wall time (a monotonic one)."""

    deadline: float
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random
    wall: Callable[[], float] | None = None

    def delay(self, rule: Rule, answers: int) -> float:
        """The wait before asking again after the `answers`-th answer of a kind."""
        return rule.delay_s(answers, now=(self.wall or self.clock)(), jitter=self.jitter())

    def fits(self, delay: float) -> bool:
        """Whether the budget still has room for the wait (and the call after it starts)."""
        return self.clock() + delay <= self.deadline

    def wait(self, delay: float) -> bool:
        """Sleep `delay` if the budget allows it: True; else False at once (the caller gives
        up, with its own reason)."""
        if not self.fits(delay):
            return False
        self.sleep(delay)
        return True
