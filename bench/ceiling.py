"""The ceiling: a plain client, no Airflow, no database, against the same sandbox.

For each of N orders it uploads the PDF (setpdf) and inserts the bill (insertbill, the pipeline's
own body), with `in_flight` orders at once (one thread and keep-alive session each), the same
number of calls in flight as the pipeline uses (pool slots x workers per batch).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from wechat_nontax.bill import Order, insertbill_body
from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_CARD_ID, SandboxWeChat


def demo_orders(n: int, prefix: str = "CEIL") -> list[Order]:
    now = int(time.time()) - 3600
    return [
        Order(f"{prefix}{i:08d}", DEFAULT_CARD_ID, DEFAULT_APPID, 100 + i, "某市医院门诊收费",
              now, f"{prefix}N{i:08d}", f"C{i:07d}", None)
        for i in range(n)
    ]  # fmt: skip


def ceiling(url: str, orders: list[Order], pdf: bytes, *, in_flight: int) -> dict:
    token = SandboxWeChat(url).access_token()
    local = threading.local()
    failures: list[str] = []

    def issue(order: Order) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        upload = session.post(
            f"{url}/card/invoice/platform/setpdf",
            params={"access_token": token},
            files={"pdf": (f"{order.order_id}.pdf", pdf, "application/pdf")},
            timeout=30,
        ).json()
        if upload.get("errcode", 0) != 0:
            failures.append(f"{order.order_id}: setpdf {upload.get('errcode')}")
            return
        answer = session.post(
            f"{url}/nontax/insertbill",
            params={"access_token": token},
            json=insertbill_body(order, str(upload["s_media_id"])),
            timeout=30,
        ).json()
        if answer.get("errcode", 0) != 0:
            failures.append(f"{order.order_id}: insertbill {answer.get('errcode')}")

    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(issue, orders))
    seconds = time.perf_counter() - started
    return {
        "orders": len(orders),
        "in_flight": in_flight,
        "seconds": round(seconds, 2),
        "orders_per_s": round(len(orders) / seconds, 1),
        "failures": failures[:10],
    }
