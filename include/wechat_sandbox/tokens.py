"""Access tokens: the stable token (`/cgi-bin/stable_token`, the same one while valid,
renewed shortly before expiry, replaced on force_refresh) and the classic one (`/cgi-bin/token`,
a new one per call, the previous valid for an overlap), and the check of a call's token.

A part of `SandboxState` (state.py), which holds the lock, the clock and the settings."""

from __future__ import annotations

import hashlib
import math
import os
import secrets
from dataclasses import dataclass
from typing import Any

from wechat_sandbox import errors as E


@dataclass(slots=True)
class Token:
    token: str
    kind: str  # "stable" | "classic"
    appid: str
    issued_at: float
    expires_at: float
    revoked_at: float | None = None  # from then on the token answers 40001 (superseded)

    def to_dict(self, now: float) -> dict[str, Any]:
        # Never the token itself: its hash identifies it (the admin API is not a token source).
        return {
            "sha256": hashlib.sha256(self.token.encode()).hexdigest(),
            "kind": self.kind,
            "appid": self.appid,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "valid": self.errcode(now) == E.OK,
        }

    def errcode(self, now: float) -> int:
        if now >= self.expires_at:
            return E.TOKEN_EXPIRED
        if self.revoked_at is not None and now >= self.revoked_at:
            return E.INVALID_CREDENTIAL
        return E.OK


class TokenIssuer:
    """The tokens of `SandboxState`."""

    def _clear_tokens(self) -> None:
        self.tokens: dict[str, Token] = {}
        self._stable: dict[str, Token] = {}  # appid -> current stable token
        self._classic: dict[str, Token] = {}  # appid -> latest classic token

    def _new_token(self, kind: str, appid: str, now: float) -> Token:
        token = Token(
            token=secrets.token_urlsafe(102),
            kind=kind,
            appid=appid,
            issued_at=now,
            expires_at=now + self.settings.token_ttl_s,
        )
        self.tokens[token.token] = token
        if self.settings.tokens_file:
            _append_private(self.settings.tokens_file, token.token + "\n")
        return token

    def _check_app(self, grant_type: Any, appid: Any, secret: Any) -> dict[str, Any] | None:
        if grant_type != "client_credential":
            return E.error(E.INVALID_GRANT_TYPE)
        if not isinstance(appid, str) or not appid:
            return E.error(E.APPID_MISSING)
        if appid not in self.settings.apps:
            return E.error(E.INVALID_APPID)
        if not isinstance(secret, str) or not secret:
            return E.error(E.SECRET_MISSING)
        if not secrets.compare_digest(secret.encode(), self.settings.apps[appid].encode()):
            return E.error(E.INVALID_APPSECRET)
        return None

    def stable_token(self, body: Any) -> dict[str, Any]:
        """POST /cgi-bin/stable_token: the same token while valid; force_refresh replaces it."""
        if not isinstance(body, dict):
            return E.error(E.DATA_FORMAT)
        force = body.get("force_refresh", False)
        if force is None:
            force = False
        if not isinstance(force, bool):
            return E.error(E.DATA_FORMAT)
        with self._lock:
            problem = self._check_app(body.get("grant_type"), body.get("appid"), body.get("secret"))
            if problem is not None:
                return problem
            appid = body["appid"]
            now = self.clock()
            current = self._stable.get(appid)
            if current is not None and not force and current.errcode(now) == E.OK:
                remaining = current.expires_at - now
                renew = self.settings.stable_renew_s
                # Renewed shortly before expiry (old and new both valid until the old expires);
                # a window as long as the TTL itself would mean a new token on every call.
                if not (renew < self.settings.token_ttl_s and remaining <= renew):
                    return {"access_token": current.token, "expires_in": _expires_in(remaining)}
            if force:
                for tok in self.tokens.values():
                    if tok.kind == "stable" and tok.appid == appid and tok.revoked_at is None:
                        tok.revoked_at = now
            token = self._new_token("stable", appid, now)
            self._stable[appid] = token
            return {"access_token": token.token, "expires_in": _expires_in(token.expires_at - now)}

    def classic_token(self, grant_type: Any, appid: Any, secret: Any) -> dict[str, Any]:
        """GET /cgi-bin/token: a new token per call; the previous one lives for the overlap."""
        with self._lock:
            problem = self._check_app(grant_type, appid, secret)
            if problem is not None:
                return problem
            now = self.clock()
            previous = self._classic.get(appid)
            if previous is not None:
                cutoff = now + self.settings.classic_overlap_s
                if previous.revoked_at is None or previous.revoked_at > cutoff:
                    previous.revoked_at = cutoff
            token = self._new_token("classic", appid, now)
            self._classic[appid] = token
            return {"access_token": token.token, "expires_in": _expires_in(token.expires_at - now)}

    def check_token(self, access_token: str | None) -> tuple[Token | None, dict[str, Any] | None]:
        """(token, None) when usable, else (None, error answer 41001/40001/42001)."""
        if not access_token:
            return None, E.error(E.TOKEN_MISSING)
        with self._lock:
            token = self.tokens.get(access_token)
            if token is None:
                return None, E.error(E.INVALID_CREDENTIAL)
            code = token.errcode(self.clock())
            if code != E.OK:
                return None, E.error(code)
            return token, None

    def tokens_list(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self.clock()
            return [tok.to_dict(now) for tok in self.tokens.values()]


def _append_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(text)


def _expires_in(remaining: float) -> int:
    return max(1, math.ceil(remaining))
