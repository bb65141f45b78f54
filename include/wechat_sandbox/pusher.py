"""WeChat's side of the callback: push the payer's authorisation event to a receiver URL as
WeChat does (signed, encrypted in safe mode; 5 s to answer, three tries in all, then it gives
up), and push the forged ones an attacker or a broken proxy would send.

The crypto here is written apart from wechat_nontax.receiver's on purpose (padding by
`cryptography`'s PKCS7 at 256 bits, the signature by hashlib over the sorted parts): the tests
check one against the other.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import struct
import time
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import requests
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# What `push(..., forgery=...)` can send instead of a genuine event.
FORGERIES = (
    "unsigned",  # no signature in the query
    "mis_signed",  # signed with another token
    "replayed",  # a genuine signature over a timestamp an hour old
    "undecryptable",  # signed, but Encrypt is no AES of ours
    "wrong_key",  # encrypted with an EncodingAESKey the receiver does not know
    "wrong_appid",  # encrypted for another app
    "oversized",  # a body of 100 KiB
    "not_xml",  # a signed body that is not XML
    "doctype",  # XML with an entity-expansion DOCTYPE
    "no_order_id",  # a genuine envelope around an event without SuccOrderId or FailOrderId
)


@dataclass
class PushResult:
    """What the receiver answered the last try (status None: no answer), after how many tries."""

    status: int | None
    body: str
    tries: int
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return self.status == 200 and self.body in ("success", "")


def _sha1(*parts: str) -> str:
    joined = "".join(sorted(parts))
    return hashlib.sha1(joined.encode()).hexdigest()  # noqa: S324 - WeChat's choice


def authorization_xml(
    order_id: str,
    *,
    authorized: bool = True,
    openid: str = "o-payer",
    to_user: str = "gh_unit",
    appid: str = "wx-unit",
    source: str = "web",
    create_time: int | None = None,
    appid_field: str = "AppId",
) -> bytes:
    """The event `user_authorize_invoice` as WeChat sends it; `appid_field="AuthorizeAppId"`
    uses WxJava's names (AuthorizeAppId + lowercase source)."""
    order_tag = "SuccOrderId" if authorized else "FailOrderId"
    source_tag = "Source" if appid_field == "AppId" else "source"
    when = int(time.time()) if create_time is None else create_time
    return (
        f"<xml><ToUserName><![CDATA[{escape(to_user)}]]></ToUserName>"
        f"<FromUserName><![CDATA[{escape(openid)}]]></FromUserName>"
        f"<CreateTime>{when}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[user_authorize_invoice]]></Event>"
        f"<{order_tag}><![CDATA[{escape(order_id)}]]></{order_tag}>"
        f"<{appid_field}><![CDATA[{escape(appid)}]]></{appid_field}>"
        f"<{source_tag}><![CDATA[{escape(source)}]]></{source_tag}></xml>"
    ).encode()


def seal(encoding_aes_key: str, xml: bytes, appid: str) -> str:
    """WeChat's `Encrypt` of `xml` for `appid`."""
    key = base64.b64decode(encoding_aes_key + "=")
    plain = secrets.token_bytes(16) + struct.pack("!I", len(xml)) + xml + appid.encode()
    padder = padding.PKCS7(256).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def _forged_xml(xml: bytes, forgery: str | None) -> bytes:
    if forgery == "not_xml":
        return b"order_id=1&authorized=yes"
    if forgery == "doctype":
        return (
            b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><xml><Event>&b;</Event></xml>'
        )
    if forgery == "oversized":
        return xml.replace(b"</xml>", b"<Pad>" + b"x" * 100_000 + b"</Pad></xml>")
    if forgery == "no_order_id":
        return re.sub(rb"<(Succ|Fail)OrderId>.*?</\1OrderId>", b"", xml)
    return xml


class EventPusher:
    """Pushes events to `url` (the receiver's callback URL) as the account with `token`,
    `encoding_aes_key` (None: plain mode) and `appid`."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        appid: str,
        encoding_aes_key: str | None = None,
        timeout_s: float = 5.0,
        tries: int = 3,
        retry_delay_s: float = 1.0,
    ) -> None:
        self.url, self.token, self.appid = url, token, appid
        self.encoding_aes_key = encoding_aes_key
        self.timeout_s, self.tries, self.retry_delay_s = timeout_s, tries, retry_delay_s
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def url_check(
        self, echostr: str = "echo-123", *, token: str | None = None
    ) -> requests.Response:
        """WeChat's GET when the callback URL is saved in its console."""
        timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10**9))
        query = {
            "signature": _sha1(token or self.token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": echostr,
        }
        return self.session.get(self.url, params=query, timeout=self.timeout_s)

    def envelope(self, xml: bytes, *, forgery: str | None = None) -> tuple[dict[str, str], bytes]:
        """The query and body WeChat would POST for `xml`, forged as `forgery` says."""
        if forgery is not None and forgery not in FORGERIES:
            raise ValueError(f"unknown forgery {forgery!r}; one of {', '.join(FORGERIES)}")
        timestamp = str(int(time.time()) - (3600 if forgery == "replayed" else 0))
        nonce = str(secrets.randbelow(10**9))
        token = "not-the-token" if forgery == "mis_signed" else self.token
        xml = _forged_xml(xml, forgery)
        query = {
            "timestamp": timestamp,
            "nonce": nonce,
            "signature": _sha1(token, timestamp, nonce),
        }
        if self.encoding_aes_key is None or forgery in ("not_xml", "doctype"):
            body, encrypted = xml, ""  # plain mode, or a body that is itself malformed
        else:
            key, appid = self.encoding_aes_key, self.appid
            if forgery == "wrong_key":
                key = base64.b64encode(os.urandom(32)).decode()[:43]
            if forgery == "wrong_appid":
                appid = "wx-someone-else"
            if forgery == "undecryptable":
                encrypted = base64.b64encode(os.urandom(96)).decode()
            else:
                encrypted = seal(key, xml, appid)
            body = (
                f"<xml><ToUserName><![CDATA[gh_unit]]></ToUserName>"
                f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
            ).encode()
        if self.encoding_aes_key is not None:
            query["encrypt_type"] = "aes"
            query["msg_signature"] = _sha1(token, timestamp, nonce, encrypted)
        if forgery == "unsigned":
            query.pop("signature")
            query.pop("msg_signature", None)
        return query, body

    def push(self, xml: bytes, *, forgery: str | None = None) -> PushResult:
        """POST the event as WeChat does: up to `tries` tries, each given `timeout_s`; a try
        that gets no answer, or a 5xx, is tried again (with a fresh signature, as WeChat signs
        each delivery); any other answer ends it."""
        query, body = self.envelope(xml, forgery=forgery)
        started = time.monotonic()
        errors: list[str] = []
        status, text = None, ""
        for attempt in range(1, self.tries + 1):
            try:
                answer = self.session.post(
                    self.url,
                    params=query,
                    data=body,
                    headers={"Content-Type": "text/xml"},
                    timeout=self.timeout_s,
                )
                status, text = answer.status_code, answer.text
                if status < 500:
                    return PushResult(status, text, attempt, time.monotonic() - started, errors)
                errors.append(f"HTTP {status}")
            except requests.RequestException as exc:
                status, text = None, ""
                errors.append(type(exc).__name__)
            if attempt < self.tries:
                time.sleep(self.retry_delay_s)
                query, body = self.envelope(xml, forgery=forgery)
        return PushResult(status, text, self.tries, time.monotonic() - started, errors)

    def authorize(self, order_id: str, **fields: object) -> PushResult:
        """The payer's authorisation (or, authorized=False, refusal) of `order_id`, pushed."""
        return self.push(authorization_xml(order_id, appid=self.appid, **fields))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    """Push one payer's answer to the receiver that `.run/stack/env.sh` names."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m wechat_sandbox.pusher", description=__doc__)
    parser.add_argument("order_id")
    parser.add_argument("--declined", action="store_true", help="the payer refuses")
    parser.add_argument("--openid", default="o-payer")
    parser.add_argument("--forgery", choices=FORGERIES)
    args = parser.parse_args(argv)
    url = os.environ.get("NONTAX_STACK_RECEIVER_URL")
    conn = os.environ.get("AIRFLOW_CONN_WECHAT_NONTAX_CALLBACK")
    if not url or not conn:
        print("source .run/stack/env.sh first (the receiver of make up)", file=sys.stderr)
        return 2
    spec = json.loads(conn)
    pusher = EventPusher(
        url,
        token=spec["password"],
        appid=spec["login"],
        encoding_aes_key=(spec.get("extra") or {}).get("encoding_aes_key") or None,
    )
    xml = authorization_xml(
        args.order_id, authorized=not args.declined, openid=args.openid, appid=pusher.appid
    )
    result = pusher.push(xml, forgery=args.forgery)
    pusher.close()
    print(
        f"HTTP {result.status} {result.body!r} after {result.tries} tries, {result.seconds:.2f} s"
    )
    return 0 if result.delivered else 1


if __name__ == "__main__":
    raise SystemExit(main())
