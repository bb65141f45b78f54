"""WeChat's side before the insert: the `wx_card` ticket and the orders' authorisation links.

`GET /cgi-bin/ticket/getticket?type=wx_card` hands out a ticket valid `ticket_ttl_s` (7200 s,
as WeChat), the same one while it is valid (WeChat keeps one per account), a new one once it
expired or was expired through the admin API. `POST /nontax/getbillauthurl` checks its body as
the facts describe it (`s_pappid`, `order_id`, `money` an integer of fen, `timestamp`, `source`
web|app, optional `redirect_url`, `ticket`) and answers `{auth_url, expire_time}`; a ticket that
is unknown, expired or of another appid answers 40097 (the project's assumption of what WeChat
answers), a malformed body 47001.

The link carries the order id, the money and the payer-facing page in the clear, so that a
harness can "authorise" by the link alone: `order_of_link(auth_url)`. Every link made is kept
(`links`) for tests and the demo to read.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from wechat_sandbox import errors as E

TICKET_TTL_S = 7200.0
LINK_TTL_S = 7200
# Where the payer would authorise: an address of the sandbox's own invention.
AUTH_PAGE = "https://sandbox.invalid/nontax/authorize"
SOURCES = ("web", "app")


@dataclass(slots=True)
class Ticket:
    ticket: str
    appid: str
    expires_at: float


def order_of_link(auth_url: str) -> str:
    """The order id a sandbox link was made for; ValueError for any other URL."""
    parts = urlsplit(auth_url)
    if f"{parts.scheme}://{parts.netloc}{parts.path}" != AUTH_PAGE:
        raise ValueError("not an authorisation link of the sandbox")
    order_ids = parse_qs(parts.query).get("order_id")
    if not order_ids:
        raise ValueError("the link names no order")
    return order_ids[0]


class AuthLinks:
    """The tickets handed out and the links made, of one sandbox."""

    def __init__(self, clock: Callable[[], float], ticket_ttl_s: float = TICKET_TTL_S) -> None:
        self.clock = clock
        self.ticket_ttl_s = ticket_ttl_s
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.tickets: dict[str, Ticket] = {}
        self._current: dict[str, Ticket] = {}  # appid -> the ticket getticket hands out
        self.links: list[dict[str, Any]] = []

    def expire_tickets(self) -> int:
        now = self.clock()
        with self._lock:
            live = [t for t in self.tickets.values() if t.expires_at > now]
            for ticket in live:
                ticket.expires_at = now
            return len(live)

    def get_ticket(self, appid: str, ticket_type: str | None) -> dict[str, Any]:
        if ticket_type != "wx_card":
            return E.error(E.INVALID_ARGS, "invalid args: type must be wx_card")
        now = self.clock()
        with self._lock:
            current = self._current.get(appid)
            if current is None or current.expires_at <= now:
                current = Ticket(secrets.token_urlsafe(64), appid, now + self.ticket_ttl_s)
                self.tickets[current.ticket] = current
                self._current[appid] = current
            return E.ok(ticket=current.ticket, expires_in=int(current.expires_at - now))

    def auth_url(self, appid: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            return E.error(E.DATA_FORMAT)
        order_id, money, stamp = body.get("order_id"), body.get("money"), body.get("timestamp")
        source, redirect_url = body.get("source"), body.get("redirect_url")
        if not (
            isinstance(body.get("s_pappid"), str) and body["s_pappid"]
            and isinstance(order_id, str) and 0 < len(order_id) <= 64
            and _positive_int(money) and _positive_int(stamp)
            and (redirect_url is None or isinstance(redirect_url, str))
        ):  # fmt: skip
            return E.error(E.DATA_FORMAT)
        if source not in SOURCES:
            return E.error(E.INVALID_ARGS, "invalid args: source must be web or app")
        now = self.clock()
        with self._lock:
            ticket = self.tickets.get(body.get("ticket") or "")
            if ticket is None or ticket.appid != appid or ticket.expires_at <= now:
                return E.error(E.INVALID_ARGS, "invalid args: invalid ticket")
            query = {"order_id": order_id, "money": money, "source": source,
                     "s_pappid": body["s_pappid"], "n": secrets.token_hex(4)}  # fmt: skip
            link = {
                "order_id": order_id, "money": money, "source": source, "appid": appid,
                "s_pappid": body["s_pappid"], "redirect_url": redirect_url,
                "auth_url": f"{AUTH_PAGE}?{urlencode(query)}", "made_at": now,
            }  # fmt: skip
            self.links.append(link)
            return E.ok(auth_url=link["auth_url"], expire_time=LINK_TTL_S)

    def links_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(link) for link in self.links]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
