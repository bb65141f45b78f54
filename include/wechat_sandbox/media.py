"""The PDFs uploaded with setpdf, each an `s_media_id` of its app valid `media_ttl_s`, and
getpdf's link to one.

A part of `SandboxState` (state.py), which holds the lock, the clock and the settings."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from wechat_sandbox import errors as E
from wechat_sandbox.tokens import Token

_MEDIA_ID_LOW = 10**18  # 19 digits, like real s_media_id values, below 2**63
_MEDIA_ID_HIGH = 2**63 - 1


@dataclass(slots=True)
class Media:
    media_id: str
    appid: str
    filename: str | None
    data: bytes
    sha256: str
    uploaded_at: float
    expires_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "s_media_id": self.media_id,
            "appid": self.appid,
            "filename": self.filename,
            "size": len(self.data),
            "sha256": self.sha256,
            "uploaded_at": self.uploaded_at,
            "expires_at": self.expires_at,
        }


class MediaStore:
    """The media of `SandboxState`."""

    def _clear_media(self) -> None:
        self.media: dict[str, Media] = {}

    def upload_pdf(self, token: Token, data: bytes, filename: str | None) -> dict[str, Any]:
        """setpdf after the multipart checks: 72040 unless it looks like a PDF."""
        limit = self.settings.max_pdf_bytes
        if not data.startswith(b"%PDF-") or (limit is not None and len(data) > limit):
            return E.error(E.INVALID_PDF)
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            now = self.clock()
            media_id = str(self._rng.randint(_MEDIA_ID_LOW, _MEDIA_ID_HIGH))
            while media_id in self.media:
                media_id = str(self._rng.randint(_MEDIA_ID_LOW, _MEDIA_ID_HIGH))
            self.media[media_id] = Media(
                media_id=media_id,
                appid=token.appid,
                filename=filename,
                data=data,
                sha256=digest,
                uploaded_at=now,
                expires_at=now + self.settings.media_ttl_s,
            )
            return E.ok(s_media_id=media_id)

    def _usable_media(self, media_id: Any, appid: str) -> Media | None:
        media = self.media.get(media_id) if isinstance(media_id, str) else None
        if media is None or media.appid != appid or self.clock() >= media.expires_at:
            return None
        return media

    def get_pdf(self, token: Token, body: Any, base_url: str) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("action") != "get_url":
            return E.error(E.DATA_FORMAT)
        with self._lock:
            media = self._usable_media(body.get("s_media_id"), token.appid)
            if media is None:
                return E.error(E.INVALID_MEDIA_ID)
            url = f"{base_url.rstrip('/')}/_sandbox/media/{media.media_id}/pdf"
            return E.ok(pdf_url=url, pdf_url_expire_time=7200)

    def media_pdf(self, media_id: str) -> bytes | None:
        with self._lock:
            media = self.media.get(media_id)
            return None if media is None else media.data

    def media_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [media.to_dict() for media in self.media.values()]
