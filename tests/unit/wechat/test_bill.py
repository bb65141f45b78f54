"""The insertbill body: the example's nesting, integers for fee and billing_time."""

from __future__ import annotations

import dataclasses
import json

import pytest

from wechat_nontax.wechat.bill import BILL_FIELDS, Order, bill_fields, insertbill_body

# The interface document's example values, with billing_time as the integer we send.
EXAMPLE_ORDER = Order(
    order_id="1511169724",
    card_id="pjZ8Yt7xiy3b9UfffRIA4Tm2xTnw",
    appid="wxc0b84a53ed8e8d29",
    fee=123,
    title="灌哥发票",
    billing_time=1511169724,
    billing_no="1511169724",
    billing_code="aabbccdd",
    pdf_path="2017/11/1511169724.pdf",
)


def test_body_has_exactly_the_examples_shape_with_our_values():
    assert insertbill_body(EXAMPLE_ORDER, "s_pdf_media_id") == {
        "order_id": "1511169724",
        "card_ext": {
            "user_card": {
                "invoice_user_data": {
                    "billing_time": 1511169724,
                    "billing_code": "aabbccdd",
                    "billing_no": "1511169724",
                    "s_pdf_media_id": "s_pdf_media_id",
                    "fee": 123,
                    "title": "灌哥发票",
                }
            }
        },
        "card_id": "pjZ8Yt7xiy3b9UfffRIA4Tm2xTnw",
        "appid": "wxc0b84a53ed8e8d29",
    }


def test_fee_and_billing_time_are_ints_through_json():
    body = insertbill_body(EXAMPLE_ORDER, "1234567890123456789")
    wire = json.loads(json.dumps(body, ensure_ascii=False))
    data = wire["card_ext"]["user_card"]["invoice_user_data"]
    assert type(data["fee"]) is int
    assert type(data["billing_time"]) is int
    assert '"billing_time": 1511169724' in json.dumps(body)
    assert wire == body


def test_chinese_title_is_preserved():
    order = dataclasses.replace(EXAMPLE_ORDER, title="某某市第一人民医院（门诊）")
    body = insertbill_body(order, "m")
    wire = json.dumps(body, ensure_ascii=False)
    assert "某某市第一人民医院（门诊）" in wire
    assert json.loads(wire)["card_ext"]["user_card"]["invoice_user_data"]["title"] == order.title


def test_media_id_is_sent_as_given():
    body = insertbill_body(EXAMPLE_ORDER, "9223372036854775807")
    assert body["card_ext"]["user_card"]["invoice_user_data"]["s_pdf_media_id"] == (
        "9223372036854775807"
    )


def test_pdf_path_is_not_part_of_the_body():
    assert "pdf_path" not in json.dumps(insertbill_body(EXAMPLE_ORDER, "m"))


@pytest.mark.parametrize("media_id", [None, "", "   ", 12345])
def test_missing_media_id_is_refused(media_id):
    with pytest.raises(ValueError, match="s_pdf_media_id"):
        insertbill_body(EXAMPLE_ORDER, media_id)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fee", "123"),
        ("fee", 12.0),
        ("fee", True),
        ("billing_time", "1511169724"),
        ("billing_time", 1511169724.0),
        ("billing_time", False),
    ],
)
def test_non_int_numbers_are_refused(field, value):
    order = dataclasses.replace(EXAMPLE_ORDER, **{field: value})
    with pytest.raises(ValueError, match=field):
        insertbill_body(order, "m")


def test_bill_fields_are_the_seeds_fields_in_order():
    assert BILL_FIELDS == (
        "order_id",
        "card_id",
        "appid",
        "fee",
        "title",
        "billing_time",
        "billing_no",
        "billing_code",
    )
    assert set(BILL_FIELDS) < {f.name for f in dataclasses.fields(Order)}
    assert list(bill_fields(EXAMPLE_ORDER)) == list(BILL_FIELDS)
    assert bill_fields(EXAMPLE_ORDER)["fee"] == 123


def test_order_is_frozen_and_slotted():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EXAMPLE_ORDER.fee = 1  # type: ignore[misc]
    assert not hasattr(EXAMPLE_ORDER, "__dict__")
    assert Order(*[getattr(EXAMPLE_ORDER, f) for f in BILL_FIELDS]).pdf_path is None
