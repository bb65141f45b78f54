"""Payers answering their authorisation links, as WeChat tells the unit: for the demo, the
tests and the benchmark.

`payer_answers` plays WeChat's side: it pushes the payer's event `user_authorize_invoice`
(SuccOrderId, or FailOrderId when the payer declines) through the sandbox's EventPusher,
signed and encrypted with the unit's callback secrets, to a real receiver process, which
records it in the order database as it records WeChat's own. With a sandbox it first tells the
sandbox that the payer answered (its insertbill then accepts the order even when
`authorize_by_default` is off). The receiver is the stack's (`CallbackReceiver.of_stack`) or,
where the caller has none, one started for it (`own_receiver`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from nontax_dev.receiver_process import CallbackSecrets, start_receiver
from wechat_sandbox.auth_links import order_of_link
from wechat_sandbox.client import DEFAULT_APPID
from wechat_sandbox.pusher import EventPusher, PushResult

# The unit's official account as the event's ToUserName names it (the sandbox's own).
UNIT_ACCOUNT = "gh_sandbox_unit"


@dataclass(frozen=True)
class CallbackReceiver:
    """Where WeChat pushes the unit's events: the receiver's callback URL and the secrets the
    unit set in WeChat's console."""

    url: str
    secrets: CallbackSecrets

    @classmethod
    def of_stack(cls, stack: Any) -> CallbackReceiver:
        """The receiver of a running `nontax_dev.stack.stack.Stack` (what its env.sh exports)."""
        if stack.state is None or not stack.state.receiver_url:
            raise RuntimeError("the stack runs no receiver")
        return cls(stack.state.receiver_url, secrets_of_connection(stack.callback_connection()))

    def pusher(self) -> EventPusher:
        s = self.secrets
        return EventPusher(self.url, token=s.token, appid=s.appid,
                           encoding_aes_key=s.encoding_aes_key)  # fmt: skip


def secrets_of_connection(connection: str) -> CallbackSecrets:
    """The secrets of AIRFLOW_CONN_WECHAT_NONTAX_CALLBACK's value (Airflow's JSON form)."""
    spec = json.loads(connection)
    extra = spec.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    return CallbackSecrets(
        token=spec["password"],
        appid=spec["login"],
        encoding_aes_key=extra.get("encoding_aes_key") or None,
        previous_encoding_aes_key=extra.get("previous_encoding_aes_key") or None,
    )


@contextlib.contextmanager
def own_receiver(orders_dsn: str, workdir: Path) -> Iterator[CallbackReceiver]:
    """A receiver process on a free port for a caller that has none (fresh secrets; its spool
    and log under `workdir`), stopped on leaving."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = start_receiver(
        orders_dsn, CallbackSecrets.generate(DEFAULT_APPID),
        spool_dir=workdir / "receiver-spool", log_path=workdir / "receiver.log",
    )  # fmt: skip
    try:
        yield CallbackReceiver(process.url, process.secrets)
    finally:
        process.stop()


@dataclass(frozen=True)
class PayerAnswer:
    """One payer's answer as WeChat pushed it: when it was sent (epoch seconds, the moment
    WeChat would send it) and what the receiver answered (status, tries, seconds)."""

    order_id: str
    authorized: bool
    pushed_at: float
    push: PushResult

    @property
    def delivered(self) -> bool:
        return self.push.delivered


def payer_answers(
    auth_url: str,
    *,
    receiver: CallbackReceiver,
    authorized: bool = True,
    openid: str | None = None,
    sandbox: Any = None,
    pusher: EventPusher | None = None,
) -> PayerAnswer:
    """The payer of the sandbox link `auth_url` authorises (or declines) its order: WeChat
    pushes the event to `receiver` (through `pusher` when the caller keeps one open)."""
    order_id = order_of_link(auth_url)
    if sandbox is not None:
        sandbox.set_authorization(order_id, "authorized" if authorized else "unauthorized")
    own = pusher is None
    pusher = pusher or receiver.pusher()
    try:
        pushed_at = time.time()
        result = pusher.authorize(
            order_id,
            authorized=authorized,
            openid=openid or f"o-payer-{order_id}",
            to_user=UNIT_ACCOUNT,
        )
    finally:
        if own:
            pusher.close()
    return PayerAnswer(order_id, authorized, pushed_at, result)


def recorded_outcome(orders_dsn: str, order_id: str) -> str | None:
    """What recording the order's latest event did to it (None: no event recorded yet)."""
    conn = psycopg2.connect(orders_dsn, application_name="nontax-payer")
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT outcome FROM nontax.authorization_event WHERE order_id = %s "
                "ORDER BY event_id DESC LIMIT 1",
                (order_id,),
            )
            found = cur.fetchone()
    finally:
        conn.close()
    return found[0] if found else None
