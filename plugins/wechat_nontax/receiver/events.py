"""The callback's XML and the events in it, pure functions.

The XML is parsed with the standard library's expat, with any DOCTYPE refused before a single
entity is declared: WeChat's messages never carry one, and without a DTD there is no entity to
expand (billion laughs) and no external entity to fetch. This keeps out a dependency
(defusedxml) for the one check it would add here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.parsers import expat

from wechat_nontax.receiver.crypto import CallbackRefused

AUTHORIZE_EVENT = "user_authorize_invoice"
# A bill's reimbursement status changed (`Status`, `CardId`, `Code`): not acted on yet, see
# `read_event`.
INVOICE_STATUS_EVENT = "update_invoice_status"
MAX_FIELD_CHARS = 256  # no field WeChat sends is longer; the order id's own limit is 64


@dataclass(frozen=True)
class AuthorizationEvent:
    """The payer's answer to an authorisation link, as record_authorization_event takes it."""

    order_id: str
    authorized: bool
    appid: str
    openid: str
    to_user: str
    source: str | None
    create_time: int

    def as_json(self) -> dict[str, object]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> AuthorizationEvent:
        return cls(**data)  # type: ignore[arg-type]


@dataclass(frozen=True)
class IgnoredEvent:
    """A message the receiver answers `success` to and only logs (`kind` says what it was)."""

    kind: str


def _refuse_dtd(*_args: object) -> None:
    raise CallbackRefused("not XML we take: a DOCTYPE or entity declaration")


def parse_xml(body: bytes) -> dict[str, str]:
    """The `<xml>` root's children as {tag: text}; CallbackRefused for anything else."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    # Refused as soon as expat meets a DTD, before any entity is declared, expanded or fetched.
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(body, True)
        root = builder.close()
    except (expat.ExpatError, AssertionError):
        raise CallbackRefused("not XML: the body does not parse") from None
    if root.tag != "xml":
        raise CallbackRefused(f"not a WeChat message: root <{root.tag[:32]}>")
    fields: dict[str, str] = {}
    for child in root:
        if len(child):
            continue  # nested elements (other message types) are not read
        fields[child.tag] = (child.text or "").strip()
    return fields


def read_event(fields: dict[str, str]) -> AuthorizationEvent | IgnoredEvent:
    """The event in a decrypted message: an authorisation, or what is answered and ignored."""
    msg_type, event = fields.get("MsgType", ""), fields.get("Event", "")
    if msg_type != "event":
        return IgnoredEvent(f"message {msg_type[:32] or '(no MsgType)'}")
    if event == INVOICE_STATUS_EVENT:
        # The place to handle a bill's reimbursement status (Status, CardId, Code) once the
        # order store keeps it; answered `success` so that WeChat does not send it again.
        return IgnoredEvent(INVOICE_STATUS_EVENT)
    if event != AUTHORIZE_EVENT:
        return IgnoredEvent(f"event {event[:64] or '(no Event)'}")
    return _authorization(fields)


def _authorization(fields: dict[str, str]) -> AuthorizationEvent:
    succ, fail = fields.get("SuccOrderId", ""), fields.get("FailOrderId", "")
    if bool(succ) == bool(fail):
        raise CallbackRefused("unknown event shape: exactly one of SuccOrderId, FailOrderId")
    # The SDKs name the app id and the source two ways (wechatpy/SKIT: AppId + Source; WxJava:
    # AuthorizeAppId + source).
    appid = fields.get("AppId") or fields.get("AuthorizeAppId") or ""
    source = fields.get("Source") or fields.get("source") or None
    create_time = fields.get("CreateTime", "")
    required = {
        "FromUserName": fields.get("FromUserName", ""),
        "ToUserName": fields.get("ToUserName", ""),
        "AppId": appid,
    }
    missing = [name for name, value in required.items() if not value]
    if missing:
        raise CallbackRefused(f"unknown event shape: no {', '.join(missing)}")
    if not create_time.isdigit():
        raise CallbackRefused("unknown event shape: CreateTime is not Unix seconds")
    order_id = succ or fail
    if len(order_id) > 64:
        raise CallbackRefused("unknown event shape: an order id over 64 characters")
    too_long = [
        n for n, v in {**required, "Source": source or ""}.items() if len(v) > MAX_FIELD_CHARS
    ]
    if too_long:
        raise CallbackRefused(f"unknown event shape: {', '.join(too_long)} too long")
    return AuthorizationEvent(
        order_id=order_id,
        authorized=bool(succ),
        appid=appid,
        openid=required["FromUserName"],
        to_user=required["ToUserName"],
        source=source,
        create_time=int(create_time),
    )
