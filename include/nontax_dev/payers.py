"""Payers answering their authorisation links, for the demo, the tests and the benchmark.

`payer_answers` stands for WeChat's side and the event receiver together: until the receiver
(its own service) is wired in, it records the payer's answer as the receiver will, through
`nontax.record_authorization_event` (migration 0012), which records the event and applies it to
its order in one transaction. With a sandbox it also tells the sandbox that the payer authorised
(its insertbill then accepts the order even when `authorize_by_default` is off). The one place
to switch to the sandbox pushing the signed event to the receiver.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg2

from wechat_sandbox.auth_links import order_of_link

# The unit's official account as the event's ToUserName names it (the sandbox's own).
UNIT_ACCOUNT = "gh_sandbox_unit"


def payer_answers(
    orders_dsn: str,
    auth_url: str,
    *,
    authorized: bool = True,
    openid: str | None = None,
    appid: str,
    sandbox: Any = None,
    at: float | None = None,
) -> str:
    """The payer of the sandbox link `auth_url` authorises (or declines) its order; returns
    what recording the event did to the order."""
    order_id = order_of_link(auth_url)
    if sandbox is not None:
        sandbox.set_authorization(order_id, "authorized" if authorized else "unauthorized")
    conn = psycopg2.connect(orders_dsn, application_name="nontax-payer")
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT nontax.record_authorization_event(%s, %s, %s, %s, %s, %s, %s)",
                (order_id, authorized, appid, openid or f"o-payer-{order_id}", UNIT_ACCOUNT,
                 "web", int(at if at is not None else time.time())),
            )  # fmt: skip
            (outcome,) = cur.fetchone()
    finally:
        conn.close()
    return outcome
