"""The media ids an issuing batch uploaded and has not written yet.

An upload's media id is written with the insert's result (one write-back per order instead of
two); when the insert has not answered UPLOAD_WRITE_AFTER_S after the upload (a slow or
timed-out call, when a crash is likeliest to fall between the two), a thread of its own writes
it alone, so that the order's row shows its PDF is up.
"""

from __future__ import annotations

import logging
import threading
import time

from wechat_nontax.issuing.batch_hold import BatchHold
from wechat_nontax.issuing.batch_stop import BatchStop
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.store.writes import Upload

log = logging.getLogger(__name__)

# How long an upload's media id waits for the insert's result before it is written on its own,
# checked every UPLOAD_WRITE_CHECK_S.
UPLOAD_WRITE_AFTER_S = 1.0
UPLOAD_WRITE_CHECK_S = 0.25


class PendingUploads:
    def __init__(self, store: OrderStore, hold: BatchHold, *, run_id: str, stop: BatchStop):
        self.store = store
        self._hold = hold
        self.run_id = run_id
        self._stop = stop
        # Uploads whose media id is not written yet, with when they were made (monotonic). The
        # lock is held while one is written, so that the order's insert result is written
        # after its upload's row, never before.
        self._uploads: dict[str, tuple[Upload, float]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Write the overdue ones until the batch stops."""
        threading.Thread(target=self._loop, name="upload-writer", daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(UPLOAD_WRITE_CHECK_S):
            due = time.monotonic() - UPLOAD_WRITE_AFTER_S
            with self._lock:
                overdue = [o for o, (_, at) in self._uploads.items() if at <= due]
            for order_id in overdue:
                try:
                    self.write(order_id)
                except Exception as exc:  # noqa: BLE001 (it is written with the insert's result)
                    log.warning("could not record the upload of order %s: %s", order_id, exc)

    def add(self, order_id: str, upload: Upload) -> None:
        with self._lock:
            self._uploads[order_id] = (upload, time.monotonic())

    def write(self, order_id: str) -> None:
        """Write the order's media id on its own if it is still waiting: before any write-back
        of the order but the insert's result, so that the history keeps the upload first."""
        with self._lock:
            pending = self._uploads.pop(order_id, None)
            if pending is None:
                return
            upload = pending[0]
            if not self.store.record_uploaded(
                order_id, upload.media_id, hold=upload.hold, run_id=self.run_id,
                duration_ms=upload.duration_ms,
            ):  # fmt: skip
                self._hold.mark_lost(order_id)  # no further call for it

    def take(self, order_id: str) -> Upload | None:
        """The order's media id not written yet, to write with the insert's result."""
        with self._lock:
            pending = self._uploads.pop(order_id, None)
        return pending[0] if pending is not None else None
