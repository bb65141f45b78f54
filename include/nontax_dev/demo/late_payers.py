"""The demo's second part: payers who authorise after their orders were loaded.

Six orders are loaded as a unit's export gives them before payment is confirmed in WeChat
(`"authorized": false`), their links are made with `nontax link --unauthorized` as a person
would type it, four payers authorise, one declines and one does nothing: WeChat (the sandbox's
pusher, `payers.payer_answers`) pushes each answer to a receiver process of the demo's own,
which records it; then one run of the fast DAG `nontax_waiting` issues the four, each once; the
declined and the waiting one are never sent.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nontax_dev.airflow_run import WAITING_DAG_ID, dags_test
from nontax_dev.payers import own_receiver, payer_answers
from wechat_nontax.wechat.bill import Order
from wechat_nontax.wechat.statuses import Status
from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_CARD_ID
from wechat_sandbox.pusher import PushResult

PAYER_ORDERS = 6
AUTHORISING = 4  # the first four authorise; the fifth declines; the sixth does nothing
TITLE = "示例医院住院预交金"


def payer_orders(now: int) -> list[Order]:
    return [
        Order(order_id=f"DEMOPAY{n:03d}", card_id=DEFAULT_CARD_ID, appid=DEFAULT_APPID,
              fee=5000 + 125 * n, title=TITLE, billing_time=now - 600,
              billing_no=f"PAY{n:07d}", billing_code=f"P{n:07d}",
              pdf_path=f"payers/DEMOPAY{n:03d}.pdf")
        for n in range(1, PAYER_ORDERS + 1)
    ]  # fmt: skip


def run_payer_flow(
    *,
    say: Callable[[str], None],
    store: Any,
    dsn: str,
    admin: Any,
    env: dict[str, str],
    run_dir: Path,
    pdf_root: Path,
    now: int,
) -> list[str]:
    """The flow above; returns what went wrong (empty: all as expected)."""
    from nontax_dev.bill_pdf import render_bill_pdf
    from wechat_nontax.cli.load import load_lines

    orders = payer_orders(now)
    lines = []
    for order in orders:
        path = pdf_root / order.pdf_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render_bill_pdf(order))
        record = dataclasses.asdict(order)
        lines.append(json.dumps({**record, "authorized": False}, ensure_ascii=False))
    export = run_dir / "unauthorized.jsonl"
    export.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    say(f'loaded {len(orders)} orders with "authorized": false: {load_lines(store, lines)}')

    linked = subprocess.run(
        [sys.executable, "-m", "wechat_nontax.cli.main", "--dsn", dsn, "link", "--unauthorized"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    say("nontax link --unauthorized:\n" + linked.stdout.rstrip() + linked.stderr.rstrip())
    links = {line.split()[0]: line.split()[1] for line in linked.stdout.splitlines()
             if line.startswith("DEMOPAY")}  # fmt: skip
    problems = []
    if len(links) != len(orders):
        return [f"nontax link made {len(links)} links of {len(orders)}: {linked.stderr[-500:]}"]

    declined = orders[AUTHORISING]
    answering = [(o, True) for o in orders[:AUTHORISING]] + [(declined, False)]
    authorised_at: dict[str, float] = {}
    pushes: list[PushResult] = []
    with own_receiver(dsn, run_dir / "receiver") as receiver:
        for order, authorized in answering:
            answer = payer_answers(links[order.order_id], receiver=receiver,
                                   authorized=authorized, sandbox=admin)  # fmt: skip
            pushes.append(answer.push)
            if authorized:
                authorised_at[order.order_id] = answer.pushed_at
            if not answer.delivered:
                problems.append(f"{order.order_id}: the receiver answered {answer.push}")
    slowest = max(p.seconds for p in pushes)
    say(f"WeChat pushed {len(pushes)} events to the receiver: "
        f"{sum(p.delivered for p in pushes)} answered 'success' (slowest {slowest * 1000:.0f} ms); "
        f"{AUTHORISING} payers authorised, {declined.order_id} declined, "
        f"{orders[-1].order_id} has not answered; dag.test() of {WAITING_DAG_ID}")  # fmt: skip
    result = dags_test(env, log_file=run_dir / "waiting-test.log", timeout=300,
                       dag_id=WAITING_DAG_ID)  # fmt: skip
    if result.run_state != "success":
        problems.append(f"the {WAITING_DAG_ID} run ended {result.run_state}")

    bills = {b["order_id"]: b for b in admin.bills()}
    sandbox_orders = admin.orders()
    for order in orders:
        row = store.get_row(order.order_id) or {}
        bill = bills.get(order.order_id)
        after = (f"{bill['inserted_at'] - authorised_at[order.order_id]:.1f} s after the "
                 "event's push") if bill and order.order_id in authorised_at else ""  # fmt: skip
        say(f"  {order.order_id}  {row.get('status')}  {after}")
        sent = sandbox_orders.get(order.order_id, {}).get("attempts", 0)
        if order.order_id in authorised_at:
            if row.get("status") != Status.INSERTED or sent != 1:
                problems.append(f"{order.order_id}: {row.get('status')}, {sent} inserts sent")
        elif sent:
            problems.append(f"{order.order_id} was sent without its payer's authorisation")
    issued = [o for o in authorised_at if o in bills]
    sent_unauthorised = sum(sandbox_orders.get(o.order_id, {}).get("attempts", 0)
                 for o in orders[AUTHORISING:])  # fmt: skip
    say(f"bills in at the sandbox: {len(issued)} of the {len(authorised_at)} authorised; "
        f"inserts sent for the declined and the silent order: {sent_unauthorised}")  # fmt: skip
    if (store.get_row(declined.order_id) or {}).get("status") != Status.DECLINED:
        problems.append(f"{declined.order_id} did not end declined")
    return problems
