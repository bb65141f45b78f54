"""The callback's XML and the authorisation event in it: both SDKs' field names, the shapes
refused, the events answered and ignored, and XML that must never be expanded."""

from __future__ import annotations

import pytest

from wechat_nontax.receiver.crypto import CallbackRefused
from wechat_nontax.receiver.events import (
    AuthorizationEvent,
    IgnoredEvent,
    parse_xml,
    read_event,
)
from wechat_sandbox.pusher import authorization_xml


def test_an_authorisation_reads_the_same_under_both_sdks_names():
    for appid_field in ("AppId", "AuthorizeAppId"):
        xml = authorization_xml(
            "order-1", openid="o-1", to_user="gh_1", appid="wx-u", source="app",
            create_time=1_800_000_000, appid_field=appid_field,
        )  # fmt: skip
        assert read_event(parse_xml(xml)) == AuthorizationEvent(
            order_id="order-1", authorized=True, appid="wx-u", openid="o-1", to_user="gh_1",
            source="app", create_time=1_800_000_000,
        )  # fmt: skip


def test_a_refusal_by_the_payer_reads_as_not_authorized():
    event = read_event(parse_xml(authorization_xml("order-2", authorized=False)))
    assert isinstance(event, AuthorizationEvent) and not event.authorized
    assert event.order_id == "order-2"
    assert AuthorizationEvent.from_json(event.as_json()) == event


@pytest.mark.parametrize(
    ("xml", "reason"),
    [
        (b"<xml><MsgType>event</MsgType><Event>user_authorize_invoice</Event></xml>",
         "exactly one of"),
        (b"<xml><MsgType>event</MsgType><Event>user_authorize_invoice</Event>"
         b"<SuccOrderId>a</SuccOrderId><FailOrderId>a</FailOrderId></xml>", "exactly one of"),
        (b"<xml><MsgType>event</MsgType><Event>user_authorize_invoice</Event>"
         b"<SuccOrderId>a</SuccOrderId><CreateTime>1</CreateTime></xml>", "no FromUserName"),
        (b"<xml><MsgType>event</MsgType><Event>user_authorize_invoice</Event>"
         b"<SuccOrderId>a</SuccOrderId><FromUserName>o</FromUserName><ToUserName>g</ToUserName>"
         b"<AppId>w</AppId><CreateTime>yesterday</CreateTime></xml>", "CreateTime"),
        (b"<xml><MsgType>event</MsgType><Event>user_authorize_invoice</Event>"
         b"<SuccOrderId>" + b"a" * 65 + b"</SuccOrderId><FromUserName>o</FromUserName>"
         b"<ToUserName>g</ToUserName><AppId>w</AppId><CreateTime>1</CreateTime></xml>", "over 64"),
    ],
)  # fmt: skip
def test_an_authorisation_of_an_unknown_shape_is_refused(xml, reason):
    with pytest.raises(CallbackRefused, match=reason):
        read_event(parse_xml(xml))


@pytest.mark.parametrize(
    ("xml", "kind"),
    [
        (b"<xml><MsgType>text</MsgType><Content>hi</Content></xml>", "message text"),
        (b"<xml><MsgType>event</MsgType><Event>subscribe</Event></xml>", "event subscribe"),
        (b"<xml><MsgType>event</MsgType><Event>update_invoice_status</Event>"
         b"<Status>INVOICE_REIMBURSE_CLOSURE</Status><CardId>c</CardId><Code>1</Code></xml>",
         "update_invoice_status"),
    ],
)  # fmt: skip
def test_other_messages_are_ignored_by_kind(xml, kind):
    assert read_event(parse_xml(xml)) == IgnoredEvent(kind)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"order=1", "does not parse"),
        (b"", "does not parse"),
        (b"<html><body/></html>", "root <html>"),
        (b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
         b"<xml><Event>&b;</Event></xml>", "DOCTYPE"),
        (b'<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><E>&x;</E></xml>',
         "DOCTYPE"),
        (b'<!DOCTYPE xml SYSTEM "http://127.0.0.1:1/x.dtd"><xml/>', "DOCTYPE"),
    ],
)  # fmt: skip
def test_bodies_that_are_not_plain_wechat_xml_are_refused(body, reason):
    with pytest.raises(CallbackRefused, match=reason):
        parse_xml(body)
