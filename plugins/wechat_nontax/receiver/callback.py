"""A callback request from its query and body to the message's fields, pure.

Order of checks: the signature's presence, the timestamp's window, the signature, then (safe
mode) the decryption and the appid inside, then the XML. Nothing of the body is trusted or parsed
beyond locating `Encrypt` before its signature has been checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wechat_nontax.receiver.crypto import (
    CallbackRefused,
    check_timestamp,
    decrypt,
    sign,
    signature_matches,
)
from wechat_nontax.receiver.events import parse_xml


@dataclass(frozen=True)
class Credentials:
    """What WeChat and the receiver share: the callback token, the appid, and the AES keys
    (the current one first, then the previous one during a rotation; none in plain mode)."""

    token: str
    appid: str
    aes_keys: tuple[bytes, ...] = ()

    def __repr__(self) -> str:  # never the token or the keys
        return f"Credentials(appid={self.appid!r}, aes_keys={len(self.aes_keys)})"


def verify_url_check(
    query: Mapping[str, str], creds: Credentials, now: float, window_s: float
) -> str:
    """The `echostr` to answer WeChat's URL check (GET) with, once its signature is verified."""
    _plain_signature(query, creds, now, window_s)
    echostr = query.get("echostr")
    if not echostr:
        raise CallbackRefused("URL check without echostr")
    return echostr


def open_message(
    query: Mapping[str, str], body: bytes, creds: Credentials, now: float, window_s: float
) -> dict[str, str]:
    """The verified message's fields; CallbackRefused with the reason for anything else."""
    if query.get("encrypt_type", "raw") == "aes":
        return _safe_mode(query, body, creds, now, window_s)
    if creds.aes_keys:
        # Safe mode is on: a plain message would skip the encryption WeChat always applies.
        raise CallbackRefused("unsigned: a plain message while safe mode is configured", 401)
    _plain_signature(query, creds, now, window_s)
    return parse_xml(body)


def _plain_signature(
    query: Mapping[str, str], creds: Credentials, now: float, window_s: float
) -> None:
    signature, nonce = query.get("signature"), query.get("nonce")
    if not signature or not nonce:
        raise CallbackRefused("unsigned: no signature or nonce", 401)
    timestamp = query.get("timestamp")
    check_timestamp(timestamp, now, window_s)
    if not signature_matches(sign(creds.token, str(timestamp), nonce), signature):
        raise CallbackRefused("mis-signed: signature does not match", 403)


def _safe_mode(
    query: Mapping[str, str], body: bytes, creds: Credentials, now: float, window_s: float
) -> dict[str, str]:
    if not creds.aes_keys:
        raise CallbackRefused("undecryptable: no EncodingAESKey configured")
    signature, nonce = query.get("msg_signature"), query.get("nonce")
    if not signature or not nonce:
        raise CallbackRefused("unsigned: no msg_signature or nonce", 401)
    timestamp = query.get("timestamp")
    check_timestamp(timestamp, now, window_s)
    encrypted = parse_xml(body).get("Encrypt")
    if not encrypted:
        raise CallbackRefused("undecryptable: no Encrypt in the body")
    if not signature_matches(sign(creds.token, str(timestamp), nonce, encrypted), signature):
        raise CallbackRefused("mis-signed: msg_signature does not match", 403)
    return parse_xml(decrypt(creds.aes_keys, encrypted, creds.appid))
