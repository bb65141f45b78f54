"""The callback crypto against WeChat's published sample (WXBizMsgCrypt's Sample.py) and against
the sandbox's own implementation of WeChat's side."""

from __future__ import annotations

import base64
import os
import time

import pytest

from wechat_nontax.receiver.callback import Credentials, open_message, verify_url_check
from wechat_nontax.receiver.crypto import (
    CallbackRefused,
    aes_key,
    check_timestamp,
    decrypt,
    encrypt,
    sign,
    signature_matches,
)
from wechat_sandbox.pusher import EventPusher, authorization_xml, seal

# WeChat's official sample of the message crypto (WXBizMsgCrypt, Sample.py): a message received
# in safe mode, with its msg_signature.
SAMPLE_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SAMPLE_TOKEN, SAMPLE_APPID = "spamtest", "wx2c2769f8efd9abc2"
SAMPLE_TIMESTAMP, SAMPLE_NONCE = "1409735669", "1320562132"
SAMPLE_MSG_SIGNATURE = "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
SAMPLE_ENCRYPT = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8P"
    "GHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6"
    "tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3y"
    "ZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+"
    "q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE="
)
NOW = 1_800_000_000.0


def test_the_published_sample_verifies_and_decrypts():
    assert (
        sign(SAMPLE_TOKEN, SAMPLE_TIMESTAMP, SAMPLE_NONCE, SAMPLE_ENCRYPT) == SAMPLE_MSG_SIGNATURE
    )
    xml = decrypt([aes_key(SAMPLE_KEY)], SAMPLE_ENCRYPT, SAMPLE_APPID)
    assert xml.startswith(b"<xml>") and xml.endswith(b"</xml>")
    assert b"<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]>" in xml


def test_the_published_sample_opens_through_the_whole_check_at_its_own_time():
    creds = Credentials(SAMPLE_TOKEN, SAMPLE_APPID, (aes_key(SAMPLE_KEY),))
    query = {
        "encrypt_type": "aes",
        "msg_signature": SAMPLE_MSG_SIGNATURE,
        "timestamp": SAMPLE_TIMESTAMP,
        "nonce": SAMPLE_NONCE,
    }
    body = f"<xml><Encrypt><![CDATA[{SAMPLE_ENCRYPT}]]></Encrypt></xml>".encode()
    fields = open_message(query, body, creds, float(SAMPLE_TIMESTAMP), 300)
    assert (fields["MsgType"], fields["Content"]) == ("text", "abcdteT")
    with pytest.raises(CallbackRefused, match="replayed"):
        open_message(query, body, creds, float(SAMPLE_TIMESTAMP) + 301, 300)


def test_the_sample_is_refused_for_another_appid_and_with_another_key():
    with pytest.raises(CallbackRefused, match="wrong appid") as refused:
        decrypt([aes_key(SAMPLE_KEY)], SAMPLE_ENCRYPT, "wx-other")
    assert refused.value.status == 403
    other = aes_key(base64.b64encode(os.urandom(32)).decode()[:43])
    with pytest.raises(CallbackRefused, match="undecryptable"):
        decrypt([other], SAMPLE_ENCRYPT, SAMPLE_APPID)


def test_the_previous_key_still_opens_during_a_rotation():
    old, new = aes_key(SAMPLE_KEY), aes_key(base64.b64encode(os.urandom(32)).decode()[:43])
    assert decrypt([new, old], SAMPLE_ENCRYPT, SAMPLE_APPID).startswith(b"<xml>")
    with pytest.raises(CallbackRefused):
        decrypt([new], SAMPLE_ENCRYPT, SAMPLE_APPID)


@pytest.mark.parametrize("size", [0, 1, 11, 12, 13, 31, 32, 33, 1000])
def test_the_sandbox_seal_and_the_receiver_agree_at_every_padding(size):
    xml = b"<xml>" + b"a" * size + b"</xml>"
    assert decrypt([aes_key(SAMPLE_KEY)], seal(SAMPLE_KEY, xml, "wx-unit"), "wx-unit") == xml
    key = aes_key(SAMPLE_KEY)
    round_trip = encrypt(key, xml, "wx-unit", random16=b"r" * 16)
    assert len(base64.b64decode(round_trip)) % 32 == 0  # WeChat's 32-byte blocks
    assert decrypt([key], round_trip, "wx-unit") == xml


@pytest.mark.parametrize(
    "encrypted", ["not base64!", base64.b64encode(b"short").decode(), "", "QUJD"]
)
def test_garbage_in_encrypt_is_undecryptable(encrypted):
    with pytest.raises(CallbackRefused, match="undecryptable"):
        decrypt([aes_key(SAMPLE_KEY)], encrypted, SAMPLE_APPID)


@pytest.mark.parametrize("value", ["short", SAMPLE_KEY + "A", "!" * 43])
def test_a_malformed_encoding_aes_key_is_named(value):
    with pytest.raises(ValueError, match="EncodingAESKey"):
        aes_key(value)


def test_signatures_compare_case_insensitively_and_refuse_none():
    good = sign("t", "1", "2")
    assert signature_matches(good, good.upper())
    assert not signature_matches(good, None)
    assert not signature_matches(good, good[:-1] + ("0" if good[-1] != "0" else "1"))


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [(None, "unsigned"), ("abc", "unsigned"), (str(int(NOW) - 301), "replayed"),
     (str(int(NOW) + 301), "replayed")],
)  # fmt: skip
def test_a_timestamp_outside_the_window_is_refused(timestamp, reason):
    with pytest.raises(CallbackRefused, match=reason):
        check_timestamp(timestamp, NOW, 300)
    assert check_timestamp(str(int(NOW) - 299), NOW, 300) == int(NOW) - 299


def test_the_url_check_answers_echostr_only_when_signed():
    creds = Credentials("tok", "wx-unit")
    query = {"timestamp": str(int(NOW)), "nonce": "5", "echostr": "hello"}
    with pytest.raises(CallbackRefused, match="unsigned"):
        verify_url_check(query, creds, NOW, 300)
    query["signature"] = sign("tok", str(int(NOW)), "5")
    assert verify_url_check(query, creds, NOW, 300) == "hello"
    query["signature"] = sign("other", str(int(NOW)), "5")
    with pytest.raises(CallbackRefused, match="mis-signed"):
        verify_url_check(query, creds, NOW, 300)


KEY = base64.b64encode(b"k" * 32).decode()[:43]


def _pushed(forgery=None, *, aes=KEY, appid_field="AppId"):
    pusher = EventPusher("http://unused", token="tok", appid="wx-unit", encoding_aes_key=aes)
    xml = authorization_xml("order-1", appid="wx-unit", appid_field=appid_field)
    return pusher.envelope(xml, forgery=forgery)


def test_a_genuine_safe_mode_push_opens_to_the_event():
    query, body = _pushed()
    creds = Credentials("tok", "wx-unit", (aes_key(KEY),))
    fields = open_message(query, body, creds, time.time(), 300)
    assert fields["SuccOrderId"] == "order-1" and fields["Event"] == "user_authorize_invoice"


@pytest.mark.parametrize(
    ("forgery", "reason", "status"),
    [
        ("unsigned", "unsigned", 401),
        ("mis_signed", "mis-signed", 403),
        ("replayed", "replayed", 403),
        ("undecryptable", "undecryptable", 400),
        ("wrong_key", "undecryptable", 400),
        ("wrong_appid", "wrong appid", 403),
        ("not_xml", "not XML", 400),
        ("doctype", "DOCTYPE", 400),
    ],
)
def test_each_forgery_is_refused_with_its_reason(forgery, reason, status):
    query, body = _pushed(forgery)
    creds = Credentials("tok", "wx-unit", (aes_key(KEY),))
    with pytest.raises(CallbackRefused, match=reason) as refused:
        open_message(query, body, creds, time.time(), 300)
    assert refused.value.status == status


def test_a_plain_message_is_refused_while_safe_mode_is_configured():
    query, body = _pushed(aes=None)
    with pytest.raises(CallbackRefused, match="plain message"):
        open_message(query, body, Credentials("tok", "wx-unit", (aes_key(KEY),)), time.time(), 300)
    fields = open_message(query, body, Credentials("tok", "wx-unit"), time.time(), 300)
    assert fields["SuccOrderId"] == "order-1"


def test_credentials_never_show_their_secrets():
    creds = Credentials("the-token", "wx-unit", (aes_key(KEY),))
    assert "the-token" not in repr(creds) and "k" * 8 not in repr(creds)
