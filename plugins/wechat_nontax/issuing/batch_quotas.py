"""The daily quotas an issuing batch keeps to: those it met, and those recorded for its appid.

Daily quotas are shared: a quota answer is recorded in the order database (`nontax.api_quota`)
for the appid and the call, and every batch reads that record before its calls (again at most
every QUOTA_RECHECK_S), so no batch, run or worker calls that API again before Beijing midnight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.quotas import QuotaStop
from wechat_nontax.wechat import errors
from wechat_nontax.wechat.statuses import Step
from wechat_nontax.wechat.timing import seconds_until_quota_reset

# The daily quota record is read at most this often by a batch (and at once when this batch
# meets a quota): well inside the 2 s a call may follow a stop recorded elsewhere (the chaos
# runner's IN_FLIGHT_S, nontax_dev/chaos/checks.py), at one read per batch and half-second
# instead of one per call.
QUOTA_RECHECK_S = 0.5

# The calls whose quota a batch checks before each call.
ISSUING_APIS = (Step.AUTHORIZATION, Step.UPLOAD, Step.INSERT)


class BatchQuotas:
    def __init__(self, store: OrderStore, appid: str, *, run_id: str):
        self.store = store
        self.appid = appid  # quota records are per appid, the account whose quota WeChat counts
        self.run_id = run_id
        # The daily quotas this batch met, by api: the orders whose calls need one wait for it.
        self._met: dict[str, QuotaStop] = {}
        self._met_lock = threading.Lock()
        # The quota stops in force for the appid, as last read (monotonic time of the read).
        self._read_lock = threading.Lock()
        self._read_at = float("-inf")
        self._recorded: dict[str, QuotaStop] = {}

    def token_met(self) -> bool:
        """Whether this batch met the token endpoint's quota (every call needs a token)."""
        with self._met_lock:
            return Step.TOKEN in self._met

    def met(self, apis: Sequence[str]) -> QuotaStop | None:
        """A quota this batch met that stops one of the calls `apis` (the token's stops all)."""
        with self._met_lock:
            met = dict(self._met)
        return met.get(Step.TOKEN) or next((met[api] for api in apis if api in met), None)

    def recorded(self, apis: Sequence[str]) -> QuotaStop | None:
        """A quota recorded for the appid that stops one of the calls `apis`."""
        stops = self._recorded_stops()
        return next((stops[api] for api in apis if api in stops), None)

    def _recorded_stops(self) -> dict[str, QuotaStop]:
        """The appid's quota stops in force, read again when the last read is QUOTA_RECHECK_S
        old (one thread reads, the others wait for its answer)."""
        with self._read_lock:
            now = time.monotonic()
            if now - self._read_at >= QUOTA_RECHECK_S:
                self._recorded = self.store.quota_stops(self.appid, ISSUING_APIS)
                self._read_at = now
            return self._recorded

    def meet(self, stop: QuotaStop) -> None:
        """The batch's orders that need `stop.api` wait for it from now on."""
        with self._met_lock:
            self._met.setdefault(stop.api, stop)

    def record(self, api: str, exc: errors.WeChatError, *, now: float) -> QuotaStop:
        """WeChat answered a daily quota for `api`: recorded for every batch until it resets."""
        return self.store.record_quota_stop(
            self.appid, api, seconds=seconds_until_quota_reset(now),
            errcode=exc.errcode, errmsg=exc.errmsg, run_id=self.run_id,
        )  # fmt: skip
