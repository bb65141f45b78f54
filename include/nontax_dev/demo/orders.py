"""The demo's orders: 200 of the kinds of non-tax fees a city collects, a few with a planted
problem and where the pipeline must leave them, the lines the load must refuse, and the files
(bill PDFs, JSON Lines) they are loaded from. No I/O but `write_demo_files`."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from wechat_nontax.settings import BEIJING_TIME
from wechat_nontax.wechat.bill import Order
from wechat_nontax.wechat.statuses import Status
from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_CARD_ID

ORDER_COUNT = 200
BATCH_SIZE = 50  # the planted problems are spread over the first three batches
SEED = 2026
UNKNOWN_CARD_ID = "pjZ8Yt7xiy3b9UfffRIA4TmNoSuch"  # well formed, unknown to WeChat: 40078


@dataclass(frozen=True)
class FeeKind:
    """A kind of non-tax fee: who collects it, its bill code, and what it usually costs."""

    unit: str
    item: str
    billing_code: str  # 票据代码, one per unit and kind of bill
    fees: tuple[int, ...] = ()  # fixed amounts in fen (fines, certificate fees)
    fee_range: tuple[int, int] = (0, 0)  # otherwise a range in fen

    @property
    def title(self) -> str:
        return f"{self.unit} {self.item}"

    def fee(self, rng: random.Random) -> int:
        if self.fees:
            return rng.choice(self.fees)
        low, high = self.fee_range
        return rng.randrange(low, high) // 10 * 10 or low  # whole jiao, like a till


FEE_KINDS: tuple[FeeKind, ...] = (
    FeeKind("某市第一人民医院", "门诊收费", "35010126", fee_range=(1_550, 86_000)),
    FeeKind("某市第一人民医院", "住院收费", "35010226", fee_range=(120_000, 2_380_000)),
    FeeKind("某市中医院", "门诊收费", "35010326", fee_range=(2_000, 45_000)),
    FeeKind("某大学", "学费", "35020126", fees=(460_000, 550_000, 680_000)),
    FeeKind("某大学", "住宿费", "35020226", fees=(80_000, 120_000, 150_000)),
    FeeKind("某市公安局交通警察支队", "罚没款", "35030126", fees=(5_000, 10_000, 20_000)),
    FeeKind("某市不动产登记中心", "不动产登记费", "35040126", fees=(8_000, 55_000)),
    FeeKind("某市公安局出入境管理支队", "证照费", "35030226", fees=(12_000, 16_000)),
    FeeKind("某市人事考试中心", "考试报名费", "35050126", fees=(6_000, 9_000, 12_000)),
)


@dataclass(frozen=True)
class Planted:
    """A problem planted in one demo order, and where the pipeline must leave that order."""

    kind: str
    what: str  # the problem, for a person
    status: Status  # the order's expected end status
    reason_has: str = ""  # a piece of the recorded reason
    errcode: int | None = None  # the last errcode WeChat answered


# What the payer is told of the refused order, and why the voided bill goes.
REFUND_REASON = "费用已退还,本笔不再开具票据"
VOID_REASON = "财政平台已冲红(退费)"

# Spread over the first three batches of 50; the fourth stays clean, so one batch goes green.
PLANTED: dict[int, Planted] = {
    13: Planted("not_pdf", "the PDF file is an HTML error page", Status.INVALID, "is not a PDF"),
    37: Planted("missing_pdf", "the PDF file was never written", Status.INVALID, "PDF not found"),
    64: Planted(
        "outside_root",
        "the PDF is a symbolic link out of the PDF root (to a real PDF)",
        Status.INVALID,
        "is a symbolic link",
    ),
    88: Planted("unknown_card", "card_id unknown to WeChat", Status.FAILED, errcode=40078),
    119: Planted(
        "unauthorized",
        "the payer has not authorised the bill yet",
        Status.AWAITING_AUTH,
        errcode=72038,
    ),
    142: Planted("rejected", "WeChat refuses the order for good", Status.REJECTED, errcode=72035),
    150: Planted(
        "refund",
        "refunded before issue: its refusal is asked for before the run (make refuse)",
        Status.REFUSED,
        REFUND_REASON,
        errcode=0,
    ),
}
# A good order whose bill the fiscal platform red-reverses after the run: voided (make void).
VOIDED = 180
# What the sandbox is told about the payers of the planted orders (see SandboxAdmin).
SANDBOX_AUTHORIZATIONS = {"unauthorized": "unauthorized", "rejected": "rejected"}


@dataclass(frozen=True)
class Unloadable:
    """A JSON Lines record the load must refuse, with a piece of the reason it must give."""

    after: int  # written after the line of this order number
    record: dict[str, Any]
    what: str
    reason_has: str


@dataclass(frozen=True)
class DemoOrder:
    order: Order
    planted: Planted | None = None

    @property
    def order_id(self) -> str:
        return self.order.order_id

    def record(self) -> dict[str, Any]:
        o = self.order
        return {
            "order_id": o.order_id, "card_id": o.card_id, "appid": o.appid, "fee": o.fee,
            "title": o.title, "billing_time": o.billing_time, "billing_no": o.billing_no,
            "billing_code": o.billing_code, "pdf_path": o.pdf_path,
        }  # fmt: skip


@dataclass(frozen=True)
class DemoData:
    orders: list[DemoOrder]
    unloadable: list[Unloadable]

    @property
    def order_ids(self) -> list[str]:
        return [d.order_id for d in self.orders]

    @property
    def good(self) -> list[DemoOrder]:
        return [d for d in self.orders if d.planted is None]

    @property
    def planted(self) -> list[DemoOrder]:
        return [d for d in self.orders if d.planted is not None]

    def lines(self) -> list[tuple[str, Unloadable | None]]:
        """The JSON Lines file, in order: each line's text and, for a bad one, what it is."""
        lines: list[tuple[str, Unloadable | None]] = []
        after = {u.after: u for u in self.unloadable}
        for number, demo in enumerate(self.orders, start=1):
            lines.append((json.dumps(demo.record(), ensure_ascii=False), None))
            if number in after:
                bad = after[number]
                lines.append((json.dumps(bad.record, ensure_ascii=False), bad))
        return lines

    def expected_rejections(self) -> list[tuple[int, Unloadable]]:
        """(line number, the unloadable record) for every line the load must refuse."""
        return [(n, bad) for n, (_, bad) in enumerate(self.lines(), start=1) if bad is not None]


def demo_order_id(number: int) -> str:
    return f"DEMO{number:06d}"


def build_demo(now: int, count: int = ORDER_COUNT, seed: int = SEED) -> DemoData:
    """The demo's orders (with their planted problems) and unloadable lines; no I/O.

    Billing times lie in the 30 days before `now`; amounts, titles and times come from a seeded
    random generator, so the same `now` gives the same data.
    """
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    next_no: Counter[str] = Counter()
    orders = []
    for number in range(1, count + 1):
        kind = rng.choice(FEE_KINDS)
        next_no[kind.billing_code] += 1
        billing_time = now - rng.randrange(3_600, 30 * 86_400)
        order_id = demo_order_id(number)
        month = datetime.fromtimestamp(billing_time, BEIJING_TIME).strftime("%Y%m")
        order = Order(
            order_id=order_id,
            card_id=DEFAULT_CARD_ID,
            appid=DEFAULT_APPID,
            fee=kind.fee(rng),
            title=kind.title,
            billing_time=billing_time,
            billing_no=f"{26_000_000 + next_no[kind.billing_code]:010d}",
            billing_code=kind.billing_code,
            pdf_path=f"{month}/{order_id}.pdf",
        )
        planted = PLANTED.get(number)
        if planted is not None and planted.kind == "unknown_card":
            order = dataclasses.replace(order, card_id=UNKNOWN_CARD_ID)
        orders.append(DemoOrder(order, planted))
    return DemoData(orders, _unloadable(orders, count, now))


def _unloadable(orders: list[DemoOrder], count: int, now: int) -> list[Unloadable]:
    def record(number: int, **changes: Any) -> dict[str, Any]:
        base = orders[-1].record()
        return {**base, "order_id": demo_order_id(number), **changes,
                "pdf_path": f"rejected/{demo_order_id(number)}.pdf"}  # fmt: skip

    taken = orders[min(4, len(orders) - 1)].order  # its billing pair is used again below
    quarter = max(1, count // 4)
    return [
        Unloadable(
            quarter // 2,
            record(count + 1, fee=0, billing_no="0099000001"),
            "a fee of 0",
            "fee: must be a positive number of fen",
        ),
        Unloadable(
            quarter + quarter // 2,
            record(count + 2, fee=35.5, billing_no="0099000002"),
            "the fee in yuan, as a decimal",
            "fee: must be an integer number of fen",
        ),
        Unloadable(
            2 * quarter + quarter // 2,
            record(count + 3, billing_time=(now - 7200) * 1000, billing_no="0099000003"),
            "billing_time in milliseconds",
            "milliseconds instead of seconds",
        ),
        Unloadable(
            3 * quarter + quarter // 2,
            record(count + 4, billing_no=taken.billing_no, billing_code=taken.billing_code),
            f"the billing_no + billing_code of {taken.order_id}",
            "billing_no + billing_code already used by another order",
        ),
    ]


# An HTML error page stored where the PDF should be: what a broken PDF service leaves behind.
NOT_A_PDF = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>502 Bad Gateway</h1><p>bill renderer unavailable</p></body></html>\n"
)


def write_demo_files(demo: DemoData, *, orders_file: Path, pdf_root: Path) -> int:
    """Write the PDFs (fresh root) and the JSON Lines file; returns how many PDFs were written."""
    from nontax_dev.bill_pdf import render_bill_pdf

    if pdf_root.exists():
        shutil.rmtree(pdf_root)
    pdf_root.mkdir(parents=True)
    written = 0
    for item in demo.orders:
        kind = item.planted.kind if item.planted else None
        if kind == "missing_pdf":
            continue
        path = pdf_root / item.order.pdf_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "outside_root":  # a real PDF beside the root, reached through a link
            outside = pdf_root.parent / f"outside-{item.order_id}.pdf"
            outside.write_bytes(render_bill_pdf(item.order))
            path.symlink_to(outside)
        else:
            path.write_bytes(NOT_A_PDF if kind == "not_pdf" else render_bill_pdf(item.order))
        written += 1
    orders_file.parent.mkdir(parents=True, exist_ok=True)
    orders_file.write_text("".join(text + "\n" for text, _ in demo.lines()), encoding="utf-8")
    return written
