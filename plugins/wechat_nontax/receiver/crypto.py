"""WeChat's callback message crypto, pure functions.

Plain mode signs the query with `signature = sha1(sorted([token, timestamp, nonce]) joined)`.
Safe mode (`encrypt_type=aes`) signs the encrypted body instead, `msg_signature = sha1(sorted(
[token, timestamp, nonce, Encrypt]) joined)`, and `Encrypt` is AES-256-CBC with the key
base64decode(EncodingAESKey + "="), the IV its first 16 bytes, PKCS#7 padding to 32-byte blocks,
over 16 random bytes + the XML's length (4 bytes, big-endian) + the XML + the appid.
Comparisons are constant-time: a signature is a secret's proof, not a lookup key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 32  # WeChat pads to 32 bytes, not AES's 16
AES_KEY_CHARS = 43


class CallbackRefused(Exception):
    """A callback request that must not be taken: `reason` is for the log (never a secret),
    `status` the HTTP answer."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def sign(token: str, *parts: str) -> str:
    """sha1 of the sorted [token, *parts] joined (timestamp, nonce, and Encrypt in safe mode)."""
    return hashlib.sha1("".join(sorted([token, *parts])).encode("utf-8")).hexdigest()  # noqa: S324


def signature_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.lower().encode())


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte key of a 43-character EncodingAESKey; ValueError names what is wrong."""
    if len(encoding_aes_key) != AES_KEY_CHARS:
        raise ValueError(f"an EncodingAESKey has {AES_KEY_CHARS} characters")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error as exc:
        raise ValueError("an EncodingAESKey is base64 (A-Z, a-z, 0-9, +, /)") from exc
    return key


def encrypt(key: bytes, xml: bytes, appid: str, *, random16: bytes | None = None) -> str:
    """`Encrypt` of `xml` for `appid` (the receiver's own replies; the tests' round trip)."""
    plain = (random16 or os.urandom(16)) + struct.pack(">I", len(xml)) + xml + appid.encode()
    pad = BLOCK - len(plain) % BLOCK
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def decrypt(keys: Sequence[bytes], encrypted: str, appid: str) -> bytes:
    """The XML inside `Encrypt`, trying each key in turn (the current one, then the previous one
    during a rotation); CallbackRefused when none opens it or the appid inside is not ours."""
    try:
        cipher_text = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError):
        raise CallbackRefused("undecryptable: Encrypt is not base64") from None
    if not cipher_text or len(cipher_text) % 16:
        raise CallbackRefused("undecryptable: Encrypt is not whole AES blocks")
    wrong_appid = False
    for key in keys:
        opened = _open(key, cipher_text)
        if opened is None:
            continue
        xml, inner_appid = opened
        if hmac.compare_digest(inner_appid, appid.encode()):
            return xml
        wrong_appid = True
    if wrong_appid:
        raise CallbackRefused("wrong appid inside the encrypted message", 403)
    raise CallbackRefused("undecryptable: no EncodingAESKey opens Encrypt")


def _open(key: bytes, cipher_text: bytes) -> tuple[bytes, bytes] | None:
    """(xml, appid) when `key` opens it with valid padding and length, else None."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(cipher_text) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
        return None
    body = plain[16:-pad]
    if len(body) < 4:
        return None
    (length,) = struct.unpack(">I", body[:4])
    if length > len(body) - 4:
        return None
    return body[4 : 4 + length], body[4 + length :]


def check_timestamp(timestamp: str | None, now: float, window_s: float) -> int:
    """The request's timestamp when within `window_s` of now (either side), else refused: an old
    request replayed by someone who recorded it fails here even with a valid signature."""
    if not timestamp or not timestamp.isdigit():
        raise CallbackRefused("unsigned: no timestamp", 401)
    value = int(timestamp)
    if abs(now - value) > window_s:
        raise CallbackRefused(
            f"replayed or stale: timestamp {value} is {now - value:+.0f} s off", 403
        )
    return value
