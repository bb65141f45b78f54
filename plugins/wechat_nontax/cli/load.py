"""Loading orders from JSON Lines into the order store.

Each line is an object with the seed's fields (`order_id, card_id, appid, fee, title,
billing_time, billing_no, billing_code`) plus `pdf_path` (relative to the PDF root) and, when
the unit's export knows it, `authorized`: `false` for an order whose payer has not authorised
yet (loaded `unauthorized`: its link is made with `nontax link`, and it is issued once the
payer's authorisation event arrives); `true` or absent for one already authorised (due at once).
A line that is not valid is reported with its number and reason, and the valid lines load all
the same. A reload never changes an order that is already inserted, and never takes back an
authorisation (see `OrderStore.upsert_orders`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import psycopg2

from wechat_nontax.issuing.pdf_paths import pdf_path_problem
from wechat_nontax.store.loads import LoadResult
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.wechat.bill import BILL_FIELDS, Order
from wechat_nontax.wechat.validation import check_order_fields, format_problems

CHUNK = 1000
# What the database's constraints mean, for a person reading the load report.
_CONSTRAINT_REASONS = {
    "bill_order_billing_no_code_key": "billing_no + billing_code already used by another order",
    "bill_order_fee_positive": "fee must be positive",
}


@dataclass
class LoadReport:
    lines: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    held: list[tuple[str, str]] = field(default_factory=list)  # changed, but a run holds it

    def add(self, result: LoadResult) -> None:
        self.inserted += result.inserted
        self.updated += result.updated
        self.unchanged += result.unchanged
        self.held += result.held

    def __str__(self) -> str:
        head = (
            f"{self.lines} lines: {self.inserted} new, {self.updated} changed, "
            f"{self.unchanged} unchanged or finished, {len(self.rejected)} rejected"
        )
        held = [
            f"  {order_id}: held by run {run_id}, not changed: load it again once that run ended"
            for order_id, run_id in self.held
        ]
        lines = [f"  line {n}: {reason}" for n, reason in self.rejected]
        return "\n".join([head + (f", {len(self.held)} held" if held else ""), *lines, *held])


def parse_line(text: str, *, now: int) -> Order:
    """One JSON Lines record as an Order; raises ValueError with a readable reason."""
    return parse_record(text, now=now)[0]


def parse_record(text: str, *, now: int) -> tuple[Order, bool]:
    """One JSON Lines record: (the Order, whether its payer has authorised it); raises
    ValueError with a readable reason."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(record) - set(BILL_FIELDS) - {"pdf_path", "authorized"})
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(unknown)}")
    problems = check_order_fields(record, now=now)
    if problems:
        raise ValueError(format_problems(problems))
    pdf_path = record.get("pdf_path")
    if pdf_path is not None and (reason := pdf_path_problem(pdf_path)) is not None:
        raise ValueError(f"pdf_path: {reason}")  # the reason issuing would give, found early
    authorized = record.get("authorized", True)
    if not isinstance(authorized, bool):
        raise ValueError(f"authorized: must be true or false, got {json.dumps(authorized)[:40]}")
    order = Order(**{name: record[name] for name in BILL_FIELDS}, pdf_path=pdf_path)
    return order, authorized


def decode_line(raw: bytes, number: int) -> str:
    """One line of the file as text; raises ValueError, naming the position but never the
    bytes, when it is not UTF-8 (a unit's export in GBK is the usual cause)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not valid UTF-8 (byte {exc.start + 1} of the line): the file must be UTF-8; an "
            "export in GBK or GB18030 converts with `iconv -f GB18030 -t UTF-8`"
        ) from None
    return text.removeprefix("\ufeff") if number == 1 else text  # a BOM some editors write


def load_lines(
    store: OrderStore, lines: Iterable[str | bytes], *, now: int | None = None
) -> LoadReport:
    """Load the lines (text, or raw bytes as `read_lines` gives them, decoded line by line so
    that one badly encoded line is reported while the others load)."""
    now = int(time.time()) if now is None else now
    report = LoadReport()
    chunk: list[tuple[int, Order, bool]] = []
    for number, line in enumerate(lines, start=1):
        report.lines = number
        try:
            text = decode_line(line, number) if isinstance(line, bytes) else line
            if not text.strip():
                continue
            chunk.append((number, *parse_record(text, now=now)))
        except ValueError as exc:
            report.rejected.append((number, str(exc)))
        if len(chunk) >= CHUNK:
            _load_chunk(store, chunk, report)
            chunk = []
    _load_chunk(store, chunk, report)
    report.rejected.sort()
    return report


def _load_chunk(
    store: OrderStore, chunk: list[tuple[int, Order, bool]], report: LoadReport
) -> None:
    if not chunk:
        return
    seen: dict[str, int] = {}
    unique: list[tuple[int, Order]] = []
    waiting: set[str] = set()
    for number, order, authorized in chunk:
        if order.order_id in seen:
            report.rejected.append((number, f"order_id repeats line {seen[order.order_id]}"))
            continue
        seen[order.order_id] = number
        unique.append((number, order))
        if not authorized:
            waiting.add(order.order_id)
    try:
        report.add(store.upsert_orders([o for _, o in unique], waiting_for_payer=waiting))
    except psycopg2.IntegrityError:
        # One bad row fails the whole statement: load the chunk row by row to find it.
        for number, order in unique:
            try:
                report.add(store.upsert_orders([order], waiting_for_payer=waiting))
            except psycopg2.IntegrityError as exc:
                report.rejected.append((number, _integrity_reason(exc)))


def _integrity_reason(exc: psycopg2.IntegrityError) -> str:
    constraint = getattr(exc.diag, "constraint_name", None)
    return _CONSTRAINT_REASONS.get(constraint or "", f"refused by the database ({constraint})")


def read_lines(path: str) -> Iterator[bytes]:
    """The file's lines as bytes: `load_lines` decodes each on its own."""
    with open(path, "rb") as lines:
        yield from lines
