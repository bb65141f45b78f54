"""The demo's second part: payers who authorise after their orders were loaded.

Six orders are loaded as a unit's export gives them before payment is confirmed in WeChat
(`"authorized": false`), their links are made with `nontax link --unauthorized` as a person
would type it, four payers authorise, one declines and one does nothing (`payers.payer_answers`,
which stands for the sandbox pushing the event to the receiver), then one run of the fast DAG
`nontax_waiting` issues the four, each once; the declined and the waiting one are never sent.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nontax_dev.airflow_run import WAITING_DAG_ID, dags_test
from nontax_dev.payers import payer_answers
from wechat_nontax.issuing.bill import Order
from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_CARD_ID

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

    authorised_at = {}
    for order in orders[:AUTHORISING]:
        authorised_at[order.order_id] = time.time()
        payer_answers(dsn, links[order.order_id], appid=DEFAULT_APPID, sandbox=admin)
    declined = orders[AUTHORISING]
    payer_answers(dsn, links[declined.order_id], authorized=False, appid=DEFAULT_APPID,
                  sandbox=admin)  # fmt: skip
    say(f"{AUTHORISING} payers authorised, {declined.order_id} declined, "
        f"{orders[-1].order_id} has not answered; airflow dags test {WAITING_DAG_ID}")  # fmt: skip
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
                 "authorisation") if bill and order.order_id in authorised_at else ""  # fmt: skip
        say(f"  {order.order_id}  {row.get('status')}  {after}")
        sent = sandbox_orders.get(order.order_id, {}).get("attempts", 0)
        if order.order_id in authorised_at:
            if row.get("status") != "inserted" or sent != 1:
                problems.append(f"{order.order_id}: {row.get('status')}, {sent} inserts sent")
        elif sent:
            problems.append(f"{order.order_id} was sent without its payer's authorisation")
    if (store.get_row(declined.order_id) or {}).get("status") != "declined":
        problems.append(f"{declined.order_id} did not end declined")
    return problems
