"""A run's orders in the order database, each with its PDF, the plan's bad data planted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nontax_dev.chaos.plan import RunPlan

MINIMAL_PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def seed_orders(store: Any, pdf_root: Path, plan: RunPlan) -> None:
    """Loads the plan's orders into `store` (an `OrderStore`), their PDFs under `pdf_root`."""
    from wechat_nontax.wechat.bill import Order
    from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_CARD_ID

    now = int(time.time())
    bad = dict(plan.bad)
    orders = []
    for n, oid in enumerate(plan.order_ids):
        fields: dict[str, Any] = {
            "order_id": oid,
            "card_id": DEFAULT_CARD_ID,
            "appid": DEFAULT_APPID,
            "fee": 100 + n,
            "title": "混沌测试医院门诊收费",
            "billing_time": now - 3600,
            "billing_no": f"B{oid}",
            "billing_code": f"C{n:04d}",
            "pdf_path": f"{plan.run % 10}/{oid}.pdf",
        }
        pdf = MINIMAL_PDF
        kind = bad.get(oid)
        if kind == "title_empty":
            fields["title"] = ""
        elif kind == "title_control":
            fields["title"] = "门诊\x1b[31m收费"
        elif kind == "billing_time_ms":
            fields["billing_time"] = now * 1000
        elif kind == "billing_time_future":
            fields["billing_time"] = now + 30 * 86400
        elif kind == "fee_huge":
            fields["fee"] = 10**12
        elif kind == "pdf_not_pdf":
            pdf = b"<html>not a pdf</html>"
        elif kind == "pdf_empty":
            pdf = b""
        elif kind == "pdf_path_escape":
            fields["pdf_path"] = "../../../etc/passwd"
        elif kind == "billing_no_sql":
            fields["billing_no"] = f"'; DROP TABLE nontax.bill_order; -- {oid}"
        if kind != "pdf_missing" and kind != "pdf_path_escape":
            path = pdf_root / fields["pdf_path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pdf)
        orders.append(Order(**fields))
    store.upsert_orders(orders, run_id=f"chaos-{plan.run}")
