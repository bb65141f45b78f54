"""Authorisation links for orders waiting for their payer: what `nontax link` runs, and what a
unit calls from its own code (`make_links`).

For each order: an order that does not wait for its payer gets none (said why); one whose link
is still valid for `REUSE_MARGIN_S` keeps it (no call); any other is asked WeChat for one
(`nontax/getbillauthurl`, the money its fee in fen), and the link is recorded on the row version
it was asked for, with a history row. A link that WeChat refuses is reported with its reason and
the other orders go on; only a token or quota problem stops the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from wechat_nontax.store.links import LinkTarget
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.wechat import errors
from wechat_nontax.wechat.hook import WeChatNonTaxHook
from wechat_nontax.wechat.statuses import Action, Status, Step

# A link that expires sooner than this is made again: the payer needs time to open it.
REUSE_MARGIN_S = 600.0
# `nontax link --unauthorized` makes at most this many links a run by default.
DEFAULT_LINK_LIMIT = 1000
# Answers after which the other orders' links are not asked for either.
_STOPS_ALL = frozenset({Action.STOP_QUOTA, Action.REFRESH_TOKEN})


@dataclass(frozen=True, slots=True)
class LinkResult:
    order_id: str
    auth_url: str | None  # None: no link (see `note`)
    expires_at: datetime | None
    outcome: str  # "made", "reused", "skipped", "failed"
    note: str = ""


def link_decision(target: LinkTarget | None, margin_s: float = REUSE_MARGIN_S) -> str | None:
    """Why `target` gets no new link ("reused" or a reason to skip it), None to make one."""
    if target is None:
        return "unknown order: not in the order table"
    if target.status != Status.UNAUTHORIZED:
        return f"not waiting for its payer ({target.status}): no link needed"
    if (
        target.auth_url is not None
        and target.auth_url_expires_at is not None
        and target.auth_url_expires_at - timedelta(seconds=margin_s) > target.now
    ):
        return "reused"
    return None


def make_links(
    store: OrderStore,
    hook: WeChatNonTaxHook,
    order_ids: Sequence[str],
    *,
    source: str = "web",
    redirect_url: str | None = None,
    clock: Callable[[], float] = time.time,
) -> list[LinkResult]:
    """The authorisation link of each of `order_ids`, made or reused, recorded on its order."""
    targets = {t.order_id: t for t in store.link_targets(order_ids)}
    results: list[LinkResult] = []
    stopped: str | None = None
    for order_id in order_ids:
        target = targets.get(order_id)
        why = link_decision(target)
        if why == "reused":
            results.append(LinkResult(order_id, target.auth_url, target.auth_url_expires_at,
                                      "reused"))  # fmt: skip
            continue
        if why is not None or stopped is not None:
            results.append(LinkResult(order_id, None, None, "skipped", why or stopped))
            continue
        try:
            link = hook.get_bill_auth_url(order_id, target.fee, timestamp=int(clock()),
                                          source=source, redirect_url=redirect_url)  # fmt: skip
        except errors.InvalidRequestError as refused:
            results.append(LinkResult(order_id, None, None, "failed", str(refused)))
            continue
        except errors.WeChatError as refused:
            results.append(LinkResult(order_id, None, None, "failed", str(refused)))
            if refused.action in _STOPS_ALL or refused.step in (Step.TOKEN, Step.TICKET):
                stopped = f"not asked: an earlier call was refused ({refused.step})"
            continue
        if store.record_link(order_id, row_version=target.row_version, auth_url=link.auth_url,
                             expires_in_s=link.expire_time):  # fmt: skip
            expires_at = target.now + timedelta(seconds=link.expire_time)
            results.append(LinkResult(order_id, link.auth_url, expires_at, "made"))
        else:
            results.append(LinkResult(order_id, None, None, "skipped",
                                      "the order changed while its link was made (reloaded, "
                                      "authorised or declined): not kept; ask again"))  # fmt: skip
    return results
