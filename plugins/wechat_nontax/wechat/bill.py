"""An order and the insertbill request body built from it.

`insertbill_body` is the one place that knows the shape of the `nontax/insertbill` body. The
interface document (`spec/insertbill-api.md`) contradicts itself: its table puts the bill
fields directly under `card_ext.user_card`, its example nests them one level deeper in
`card_ext.user_card.invoice_user_data`, and it types `fee` and `billing_time` as Int while
the example sends `billing_time` as a string. We send the example's nesting (the form the SKIT
.NET SDK sends) with both numbers as JSON integers, as the table says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The bill fields an order carries into the body (besides the PDF's media id).
BILL_FIELDS: tuple[str, ...] = (
    "order_id",
    "card_id",
    "appid",
    "fee",
    "title",
    "billing_time",
    "billing_no",
    "billing_code",
)


@dataclass(frozen=True, slots=True)
class Order:
    """One order whose fiscal e-bill goes into the payer's WeChat card package.

    `fee` is in fen (分); `billing_time` is a 10-digit Unix time (the bill's date is read in the
    UTC+8 calendar); `pdf_path` is the bill PDF's location relative to the configured PDF root,
    None while the order has none.
    """

    order_id: str
    card_id: str
    appid: str
    fee: int
    title: str
    billing_time: int
    billing_no: str
    billing_code: str
    pdf_path: str | None = None


def bill_fields(order: Order) -> dict[str, Any]:
    """The order's `BILL_FIELDS` by name, for validation and records."""
    return {name: getattr(order, name) for name in BILL_FIELDS}


def insertbill_body(order: Order, s_pdf_media_id: str) -> dict[str, Any]:
    """The JSON body of `nontax/insertbill` for an order whose PDF is uploaded.

    The example's nesting under `card_ext.user_card.invoice_user_data`, with `fee` and
    `billing_time` as integers on purpose (see the module docstring).
    """
    if not isinstance(s_pdf_media_id, str) or not s_pdf_media_id.strip():
        raise ValueError(
            f"order {order.order_id}: no s_pdf_media_id ({s_pdf_media_id!r}): upload the PDF first"
        )
    for name in ("fee", "billing_time"):
        value = getattr(order, name)
        # A bool is an int to Python but true/false in JSON; a string would repeat the example.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(
                f"order {order.order_id}: {name} must be an int, got {type(value).__name__}"
            )
    return {
        "order_id": order.order_id,
        "card_id": order.card_id,
        "appid": order.appid,
        "card_ext": {
            "user_card": {
                "invoice_user_data": {
                    "fee": order.fee,
                    "title": order.title,
                    "billing_time": order.billing_time,
                    "billing_no": order.billing_no,
                    "billing_code": order.billing_code,
                    "s_pdf_media_id": s_pdf_media_id,
                }
            }
        },
    }
