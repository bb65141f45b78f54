"""Waits and moments: the delay before a call is tried again, and Beijing's calendar day, by
which WeChat counts its daily quotas. Pure: the caller supplies the clock and the random numbers.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from wechat_nontax.settings import BEIJING_TIME


def delay_until_next_minute(now: float) -> float:
    """Seconds from `now` (Unix time) into the next calendar minute, plus one for clock skew."""
    next_minute = (math.floor(now / 60) + 1) * 60
    return next_minute - now + 1.0


def beijing_time(at: datetime) -> str:
    """A moment as the logs, the runbook and WeChat's quotas speak of it: Beijing time."""
    return f"{at.astimezone(BEIJING_TIME):%Y-%m-%d %H:%M} Beijing time"


def seconds_until_quota_reset(now: float) -> float:
    """Seconds from `now` (Unix time) to the next midnight Beijing time, when daily quotas reset.

    WeChat resets daily quotas at midnight Beijing time (assumption, not confirmed by the
    facts); plus a minute for clock skew.
    """
    today = datetime.fromtimestamp(now, BEIJING_TIME).date()
    midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), BEIJING_TIME)
    return midnight.timestamp() - now + 60.0


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0, jitter: float) -> float:
    """Exponential backoff with equal jitter for the `attempt`-th retry (1-based).

    The delay doubles from `base` up to `cap`; half of it is fixed and half scaled by `jitter`,
    a random number in [0, 1) that the caller draws, so concurrent workers spread out while
    the function stays pure.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    ceiling = min(cap, base * 2 ** min(attempt - 1, 64))  # bounded exponent: no overflow
    return ceiling / 2 + ceiling / 2 * jitter
