"""What the sandbox counts and logs of the calls it answers: calls per endpoint, every call in
arrival order, each order's answers per endpoint, and its insertbill attempts.

A part of `SandboxState` (state.py), which holds the lock, the clock and the settings."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from wechat_sandbox import errors as E

ENDPOINTS = (
    "stable_token",
    "token",
    "setpdf",
    "getpdf",
    "insertbill",
    "getauthdata",
    "rejectinsert",
    "updatestatus",
    "getticket",
    "getbillauthurl",
)

# How many calls the call log keeps (a chaos run makes a few hundred).
CALL_LOG_MAX = 100_000


@dataclass(slots=True)
class OrderStats:
    """What happened to insertbill calls naming one order_id (fault-injected answers included)."""

    attempts: int = 0
    successes: int = 0
    repeats: int = 0  # answers 72056
    last_errcode: int | None = None
    errcodes: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "successes": self.successes,
            "repeats": self.repeats,
            "last_errcode": self.last_errcode,
            "errcodes": {str(k): v for k, v in self.errcodes.items()},
        }


class CallRecords:
    """The call records of `SandboxState`."""

    def _clear_calls(self) -> None:
        self.calls: Counter[str] = Counter({name: 0 for name in ENDPOINTS})
        self.orders: dict[str, OrderStats] = {}
        # order_id -> endpoint -> answers (errcode, "http_error" for none), faults included.
        self.order_answers: dict[str, dict[str, Counter]] = {}
        self.lost_answers = 0
        self.faulted_calls = 0
        # Every call in arrival order: when it arrived, the endpoint, the order it named, and
        # its answer (errcode; getauthdata's invoice_status): what a test or the chaos runner
        # needs to prove that no call came after a point in time (a recorded quota stop, a
        # "never auth"). Bounded: the oldest go first.
        self.call_log: deque[dict[str, Any]] = deque(maxlen=CALL_LOG_MAX)

    def count_call(self, endpoint: str) -> None:
        with self._lock:
            self.calls[endpoint] += 1

    def _order_stats(self, order_id: str) -> OrderStats:
        stats = self.orders.get(order_id)
        if stats is None:
            stats = self.orders[order_id] = OrderStats()
        return stats

    def note_insert_attempt(self, order_id: str) -> None:
        with self._lock:
            self._order_stats(order_id).attempts += 1

    def note_insert_answer(self, order_id: str, errcode: int | None) -> None:
        with self._lock:
            stats = self._order_stats(order_id)
            stats.last_errcode = errcode
            stats.errcodes[errcode if errcode is not None else "http_error"] += 1
            if errcode == E.ORDER_ID_REPEATED:
                stats.repeats += 1

    def log_call(
        self,
        at: float,
        endpoint: str,
        order_id: str | None,
        errcode: int | None,
        invoice_status: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "at": at, "endpoint": endpoint, "order_id": order_id, "errcode": errcode,
        }  # fmt: skip
        if invoice_status is not None:
            entry["invoice_status"] = invoice_status
        with self._lock:
            self.call_log.append(entry)

    def call_log_list(self, since: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self.call_log if since is None or e["at"] >= since]

    def note_answer(self, endpoint: str, order_id: str, errcode: int | None) -> None:
        """One answer to a call naming `order_id` (None: no JSON answer, an HTTP error)."""
        with self._lock:
            per_order = self.order_answers.setdefault(order_id, {})
            answers = per_order.get(endpoint)
            if answers is None:
                answers = per_order[endpoint] = Counter()
            answers[errcode if errcode is not None else "http_error"] += 1

    def orders_dict(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {order_id: stats.to_dict() for order_id, stats in self.orders.items()}

    def order_stats(self, order_id: str) -> dict[str, Any] | None:
        with self._lock:
            stats = self.orders.get(order_id)
            return None if stats is None else stats.to_dict()

    def answers_for(self, order_id: str) -> dict[str, dict[str, int]]:
        with self._lock:
            per_order = self.order_answers.get(order_id, {})
            return {ep: {str(k): v for k, v in c.items()} for ep, c in per_order.items()}

    def calls_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.calls)
