"""The sandbox's in-memory state and the WeChat logic, free of HTTP: `SandboxState`, one
sandbox's parts under one lock, each part a module of its own:

- tokens.py: the access tokens; media.py: the uploaded PDFs;
- authorizations.py: the payers' authorisations (getauthdata);
- bills.py: insertbill, rejectinsert and the bill cards' statuses;
- calls.py: what is counted and logged of the calls.

The parts share the lock, the clock, the settings and the random numbers set here, and read one
another where WeChat's rules tie them (an insert looks at the authorisation and the media; an
order refused by rejectinsert is rejected for getauthdata too).

Every public method takes the lock and does not await, so the state stays consistent whether it
is used from the event loop (one worker, the normal case) or from threads. Methods that answer a
WeChat call return the JSON payload as a dict.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from wechat_sandbox.authorizations import Authorizations
from wechat_sandbox.bills import BillBook
from wechat_sandbox.calls import CallRecords
from wechat_sandbox.config import Settings
from wechat_sandbox.media import MediaStore
from wechat_sandbox.tokens import TokenIssuer


class SandboxState(CallRecords, TokenIssuer, MediaStore, Authorizations, BillBook):
    """Apps, tokens, media, bills, authorisations and counters of one sandbox."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._initial = settings.copy()
        self.settings = settings.copy()
        self.clock = clock
        self._lock = threading.RLock()
        self._rng = random.Random()
        self.started_at = clock()
        self._clear()

    def _clear(self) -> None:
        self._clear_calls()
        self._clear_tokens()
        self._clear_media()
        self._clear_authorizations()
        self._clear_bills()

    # ----------------------------------------------------------------- admin
    def reset(self) -> None:
        """Back to the state at start: settings too; no tokens, media, bills, counters."""
        with self._lock:
            self.settings = self._initial.copy()
            self._clear()

    def configure(self, updates: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.settings.update(updates)
            return self.settings.to_dict()

    def expire_tokens(self) -> int:
        """Expire every token now (they answer 42001); returns how many were still valid."""
        with self._lock:
            return _expire_now(self.tokens.values(), self.clock())

    def expire_media(self) -> int:
        with self._lock:
            return _expire_now(self.media.values(), self.clock())

    def summary(self) -> dict[str, Any]:
        with self._lock:
            orders = self.orders.values()
            return {
                "started_at": self.started_at,
                "now": self.clock(),
                "calls": dict(self.calls),
                "total_calls": sum(self.calls.values()),
                "bills": len(self.bills),
                "media": len(self.media),
                "tokens": self.tokens_list(),
                "orders": {
                    "attempted": len(self.orders),
                    "insert_attempts": sum(s.attempts for s in orders),
                    "inserted": sum(1 for s in orders if s.successes),
                    "inserted_more_than_once": sorted(
                        o for o, s in self.orders.items() if s.successes > 1
                    ),
                    "repeat_answers": sum(s.repeats for s in orders),
                },
                "authorizations": len(self.authorizations),
                "rejections": len(self.rejections),
                "reimburse_statuses": dict(
                    Counter(r["reimburse_status"] for r in self.card_status.values())
                ),
                "inserts_today": self.inserts_today(),
                "faulted_calls": self.faulted_calls,
                "lost_answers": self.lost_answers,
                "config": self.settings.to_dict(),
            }


def _expire_now(items: Iterable[Any], now: float) -> int:
    """Set every still-valid item's `expires_at` to `now`; returns how many were valid."""
    alive = 0
    for item in items:
        if item.expires_at > now:
            alive += 1
            item.expires_at = now
    return alive
