"""When an issuing batch stops sending, and how an order's work ends early.

A daily quota of the token endpoint, a broken configuration, a lost database, a bug or a person
stopping the task stops the whole batch: no further calls, the orders not reached stay due with
the stop's outcome and reason. An order whose work ends before its insert (a quota, a lost
hold, a refusal asked meanwhile) raises `OrderEnded` with its result.
"""

from __future__ import annotations

import threading

from wechat_nontax.issuing.outcomes import OrderResult, Outcome


class OrderEnded(Exception):
    """The order's work ends here, with this result."""

    def __init__(self, result: OrderResult):
        super().__init__(result.reason)
        self.result = result


class BatchStop:
    """Set once; the first stop's outcome and reason stand for every order not sent after it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._stopped = OrderResult("", Outcome.QUOTA)
        self._lock = threading.Lock()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True once the batch stopped."""
        return self._event.wait(timeout)

    def stop(self, outcome: Outcome, reason: str) -> None:
        with self._lock:
            if not self._event.is_set():
                self._stopped = OrderResult("", outcome, reason)
                self._event.set()

    def stop_unlocked(self, reason: str) -> None:
        """Stop from a signal handler (the task is being killed): no lock is taken."""
        if not self._event.is_set():
            self._stopped = OrderResult("", Outcome.RETRY_LATER, reason)
            self._event.set()

    def result(self, order_id: str) -> OrderResult:
        """The order's result when the batch stopped before its call."""
        return OrderResult(order_id, self._stopped.outcome, self._stopped.reason)
