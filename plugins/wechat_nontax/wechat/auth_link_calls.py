"""The calls before the insert: an order's authorisation link (`nontax/getbillauthurl`) and the
`wx_card` ticket it is signed with, part of `WeChatNonTaxHook`.

The ticket is cached like the access token, in its own row of the same table
(`token_cache.TICKET_SOURCE`), fetched with the cached access token, refreshed once for every
worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wechat_nontax.wechat import errors, validation
from wechat_nontax.wechat.rules import TICKET_REFUSED
from wechat_nontax.wechat.statuses import Step
from wechat_nontax.wechat.token_cache import TICKET_SOURCE

if TYPE_CHECKING:
    from wechat_nontax.wechat.token_cache import TokenCache


@dataclass(frozen=True, slots=True)
class AuthLink:
    """An order's authorisation link (getbillauthurl): the payer opens `auth_url` in WeChat."""

    auth_url: str
    expire_time: int  # seconds the link stays valid, as WeChat answered


class AuthLinkCalls:
    """getbillauthurl and getticket, on the hook's Connection, session and token (`_call`,
    `_mask_once`, `_token_cache_factory`, `s_pappid` are the hook's)."""

    _ticket_cache: TokenCache | None

    @property
    def ticket_cache(self) -> TokenCache:
        """The wx_card ticket's cache: the token's mechanism, its own row."""
        if self._ticket_cache is None:
            margin = int(self._extras.get("token_margin_s", 300))
            self._ticket_cache = self._token_cache_factory(
                self.appid, TICKET_SOURCE, margin, step=Step.TICKET, can_force=False
            )
        return self._ticket_cache

    def get_card_ticket(self) -> str:
        """A valid wx_card ticket from the shared cache, fetched once for everyone when stale."""
        ticket = self.ticket_cache.get(self.fetch_card_ticket)
        self._mask_once(ticket)
        return ticket

    def fetch_card_ticket(self, force_refresh: bool = False) -> tuple[str, int]:
        """cgi-bin/ticket/getticket?type=wx_card: (ticket, expires_in). WeChat has no forced
        refresh of a ticket: `force_refresh` is ignored."""
        answer = self._call(
            Step.TICKET, "/cgi-bin/ticket/getticket", method="GET", params={"type": "wx_card"}
        )
        ticket, expires_in = answer.get("ticket"), answer.get("expires_in", 7200)
        if not isinstance(ticket, str) or not ticket:
            raise errors.error_for("malformed_answer", "no ticket in the answer", step=Step.TICKET)
        self._mask_once(ticket)
        if not isinstance(expires_in, int) or isinstance(expires_in, bool):
            raise errors.error_for(
                "malformed_answer", "expires_in is not an integer number of seconds",
                step=Step.TICKET,
            )  # fmt: skip
        return ticket, expires_in

    def get_bill_auth_url(
        self,
        order_id: str,
        money_fen: int,
        *,
        timestamp: int,
        source: str = "web",
        redirect_url: str | None = None,
    ) -> AuthLink:
        """nontax/getbillauthurl: the link where the payer authorises this order's bill.

        Checked first (`validation.check_auth_link`): `errors.InvalidRequestError` without a
        call. A 40097 (a stale ticket, assumed) is asked again once with a fresh ticket; the
        second one fails (`policy.STEP_POLICY`)."""
        problems = validation.check_auth_link(order_id, money_fen, source, redirect_url)
        if problems:
            raise errors.InvalidRequestError(problems)
        body: dict[str, Any] = {
            "s_pappid": self.s_pappid, "order_id": order_id, "money": money_fen,
            "timestamp": timestamp, "source": source,
        }  # fmt: skip
        if redirect_url is not None:
            body["redirect_url"] = redirect_url

        def ask(ticket: str) -> dict[str, Any]:
            return self._call(
                Step.AUTH_LINK, "/nontax/getbillauthurl", json_body={**body, "ticket": ticket},
                secrets=(ticket,),
            )  # fmt: skip

        ticket = self.get_card_ticket()
        try:
            answer = ask(ticket)
        except errors.WeChatError as refused:
            if refused.signal != TICKET_REFUSED:
                raise
            ticket = self.ticket_cache.invalidate(ticket, self.fetch_card_ticket)
            self._mask_once(ticket)
            try:
                answer = ask(ticket)
            except errors.WeChatError as again:
                if again.signal != TICKET_REFUSED:
                    raise
                raise errors.error_for(
                    again.signal, again.errmsg, step=Step.AUTH_LINK, answers=2
                ) from None
        auth_url, expire_time = answer.get("auth_url"), answer.get("expire_time", 7200)
        if not isinstance(auth_url, str) or not auth_url.startswith(("https://", "http://")):
            raise errors.error_for(
                "malformed_answer", "no auth_url in the answer", step=Step.AUTH_LINK
            )
        if not isinstance(expire_time, int) or isinstance(expire_time, bool) or expire_time <= 0:
            raise errors.error_for(
                "malformed_answer", "expire_time is not a positive number of seconds",
                step=Step.AUTH_LINK,
            )  # fmt: skip
        return AuthLink(auth_url, expire_time)
