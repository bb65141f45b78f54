"""An issuing batch's hold on its orders, for one task try: taken, renewed, checked, ended.

The store's hold protocol (`store.holds`) from the batch's side: which orders this try holds and
at which row version, which it lost, and until when the hold surely holds (renewed every
quarter of its length by a thread of its own). A call starts only while the order is surely
held for as long as the call may take.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from wechat_nontax.issuing.batch_stop import BatchStop, OrderEnded
from wechat_nontax.issuing.outcomes import OrderResult, Outcome
from wechat_nontax.observability import metrics
from wechat_nontax.store.holders import Hold, lost_hold_reason
from wechat_nontax.store.orders import OrderStore

log = logging.getLogger(__name__)


class BatchHold:
    def __init__(
        self,
        store: OrderStore,
        holder: str,
        *,
        hold_s: float,
        stop: BatchStop,
        sleep: Callable[[float], None],
    ):
        self.store = store
        self.holder = holder
        self.hold_s = hold_s
        self._stop = stop
        self._sleep = sleep
        self._versions: dict[str, int] = {}
        self._active: set[str] = set()  # held and not finished by this try
        self._lost: set[str] = set()  # no longer held: another holder may have it
        self._valid_until = 0.0  # monotonic time until which the hold surely holds
        self._lock = threading.Lock()

    def take(
        self, order_ids: Sequence[str], *, include_needs_person: bool
    ) -> dict[str, OrderResult]:
        """Hold the batch's orders for this try; the result of each order not held. Orders an
        earlier try of the same batch still holds (a try marked failed and cleared while it
        runs, a zombie) are waited for, at most one hold's length: that try stops renewing
        once Airflow has stopped it."""
        instance = self.holder.rsplit("|", 1)[0] + "|"
        wait_until = time.monotonic() + self.hold_s + 5.0
        pending = list(order_ids)
        results: dict[str, OrderResult] = {}
        while True:
            started = time.monotonic()
            first = not self._versions and not results
            # A person's clear re-sends what needed a person as it stood then; an order that an
            # earlier try ends `failed` while this one waits for it is not sent again.
            hold = self.store.hold_batch(
                self.holder, pending, hold_s=self.hold_s,
                include_needs_person=include_needs_person and first,
            )  # fmt: skip
            with self._lock:
                if first:
                    self._valid_until = started + self.hold_s
                self._versions.update(hold.held)
                self._active.update(hold.held)
            if first:
                threading.Thread(target=self._renew_loop, name="hold-renewal", daemon=True).start()
            earlier = [
                order_id for order_id, why in hold.not_held.items()
                if why.kind == "held" and (why.holder or "").startswith(instance)
            ]  # fmt: skip
            for order_id, why in hold.not_held.items():
                results[order_id] = OrderResult(order_id, _NOT_HELD_OUTCOME[why.kind], why.reason)
            if not earlier or time.monotonic() >= wait_until:
                for order_id in earlier:
                    results[order_id] = OrderResult(
                        order_id, Outcome.EARLIER_TRY,
                        "an earlier try of this batch still holds it: retried later",
                    )  # fmt: skip
                return results
            self._sleep(min(2.0, max(0.1, wait_until - time.monotonic())))
            pending = earlier

    def _renew_loop(self) -> None:
        interval = self.hold_s / 4
        while not self._stop.wait(interval):
            with self._lock:
                active = list(self._active)
            started = time.monotonic()
            try:
                still = self.store.renew_hold(self.holder, active, hold_s=self.hold_s)
            except Exception as exc:  # noqa: BLE001 (the calls stop by themselves when it lapses)
                log.warning("could not renew the hold on the batch's orders: %s", exc)
                continue
            with self._lock:
                self._valid_until = started + self.hold_s
                self._lost.update(set(active) - still)

    def held(self, order_ids: Sequence[str]) -> list[str]:
        """Those of `order_ids` this try holds and works on."""
        with self._lock:
            return [order_id for order_id in order_ids if order_id in self._active]

    def check(self, order_id: str, *, reserve_s: float) -> None:
        """Raise unless this try surely holds the order for `reserve_s`, what a call may take."""
        if self._stop.is_set():
            raise OrderEnded(self._stop.result(order_id))
        with self._lock:
            lost = order_id in self._lost
            left = self._valid_until - time.monotonic()
        if lost:
            raise OrderEnded(OrderResult(order_id, Outcome.HOLD_LOST, "not sent"))
        if left < reserve_s:
            self._stop.stop(
                Outcome.RETRY_LATER,
                "not sent: the hold on the batch's orders could not be renewed in time (is the "
                "order database reachable?)",
            )
            raise OrderEnded(self._stop.result(order_id))

    def of(self, order_id: str) -> Hold:
        """What a write-back of the order expects: this try, the row version it read."""
        return Hold(self.holder, self._versions[order_id])

    def version_of(self, order_id: str) -> int:
        """The row version this try read of the order (what it sent)."""
        return self._versions[order_id]

    def finished(self, order_id: str) -> None:
        with self._lock:
            self._active.discard(order_id)

    def mark_lost(self, order_id: str) -> None:
        """A write-back found the order no longer held: no further call for it."""
        with self._lock:
            self._lost.add(order_id)

    def lost(self, order_id: str) -> OrderResult:
        """The order's result when a write-back found it no longer held."""
        self.mark_lost(order_id)
        metrics.hold_lost("order")
        return OrderResult(order_id, Outcome.HOLD_LOST, "this try's result was not recorded")

    def end(self, *, lease_s: float) -> None:
        """Give the orders back to the run (its claim, for `lease_s`)."""
        with self._lock:
            held = list(self._versions)  # a final write-back already ended its order's hold
        try:
            self.store.end_hold(self.holder, held, lease_s=lease_s)
        except Exception as exc:  # noqa: BLE001 (the hold runs out by itself)
            log.warning("could not end the hold on the batch's orders (it runs out): %s", exc)

    def explain_lost(self, results: dict[str, OrderResult]) -> None:
        """Say why each order whose hold this try lost is no longer its own: who holds it now,
        or that the hold ran out (read once, after the batch's calls)."""
        lost = [order_id for order_id, r in results.items() if r.outcome is Outcome.HOLD_LOST]
        if not lost:
            return
        try:
            why = self.store.why_not_held(lost)
        except Exception as exc:  # noqa: BLE001 (the outcome stands without its why)
            log.warning("could not read who holds the orders this try lost: %s", exc)
            return
        for order_id in lost:
            r = results[order_id]
            results[order_id] = OrderResult(
                order_id, r.outcome, f"{r.reason}: lost its hold, {lost_hold_reason(why[order_id])}"
            )


_NOT_HELD_OUTCOME = {
    "unknown": Outcome.FAILED,
    "finished": Outcome.ALREADY_DONE,
    "needs_person": Outcome.NOT_DUE,
    "not_yet": Outcome.NOT_DUE,
    "refusing": Outcome.NOT_DUE,
    "held": Outcome.NOT_HELD,
    "claimed": Outcome.NOT_HELD,
}
