"""What one issuing batch is given: its settings, WeChat's calls it makes, the PDF reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from wechat_nontax.settings import DEFAULT_LEASE_S, DEFAULT_MEDIA_MARGIN_S, default_hold_s
from wechat_nontax.wechat.bill import Order
from wechat_nontax.wechat.validation import Limits


@dataclass(frozen=True)
class Settings:
    pdf_root: str
    limits: Limits = field(default_factory=Limits)
    max_workers: int = 16
    time_budget_s: float = 300.0  # how long transient errors may be retried inside the task
    media_margin_s: float = DEFAULT_MEDIA_MARGIN_S
    lease_s: int = DEFAULT_LEASE_S  # the run's claim on orders a finished try leaves due
    # How long a hold lasts unrenewed; raised to twice `call_reserve_s` when shorter.
    hold_s: float = field(default_factory=default_hold_s)
    call_timeout_s: float = 15.0  # the hook's timeout: a call starts only if it fits the hold
    dry_run: bool = False
    # A person cleared the task: orders that need a person are worked on again too.
    include_needs_person: bool = False
    # The account's card ids (the WeChat Connection's extra `card_ids`); None: not configured.
    card_ids: frozenset[str] | None = None

    @property
    def call_reserve_s(self) -> float:
        """Hold left that a call needs to start: a token fetch, the call, a retry after a
        refreshed token, each up to the timeout. Renewing every quarter of the hold keeps at
        least three quarters of it while the order database answers. The timeout is requests'
        per-read one, not a total: an answer that trickles in byte by byte could outlast it;
        the hold is at least twice this reserve for that margin."""
        return 3 * self.call_timeout_s + 2.0


class WeChatApi(Protocol):
    def upload_pdf(self, pdf: bytes, filename: str = ...) -> str: ...
    def insert_bill(self, order: Order, s_pdf_media_id: str): ...
    def get_auth_data(self, order_id: str): ...


PdfReader = Callable[[str, str | None, int], bytes | None]
