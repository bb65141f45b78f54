"""Settings of the sandbox: the one place for its defaults, the environment and run-time updates.

The default credentials below are also what the client module re-exports, so a test and the
server agree without repeating them. Environment variables (read by `Settings.from_env`):

- WECHAT_SANDBOX_HOST, WECHAT_SANDBOX_PORT
- WECHAT_SANDBOX_APPID, WECHAT_SANDBOX_SECRET (the one app known at start)
- WECHAT_SANDBOX_CARD_IDS (comma-separated card ids accepted by insertbill)
- WECHAT_SANDBOX_TOKEN_TTL_S, WECHAT_SANDBOX_CLASSIC_OVERLAP_S, WECHAT_SANDBOX_STABLE_RENEW_S,
  WECHAT_SANDBOX_MEDIA_TTL_S (seconds, may be fractional)
- WECHAT_SANDBOX_ADMIN_TOKEN: what the admin API (`/_sandbox/`) wants in the header
  `X-Sandbox-Admin-Token`; whoever starts the sandbox generates it
- WECHAT_SANDBOX_TOKENS_FILE: a file the sandbox appends every access token it issues to
  (created 0600), for a test harness that scans logs for them; the admin API never shows one
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_APPID = "wx5a9d3c1e7b2f4086"
DEFAULT_SECRET = "5b8e2c7a1f9d4e3b6a0c8d2f7e1b9a4c"
DEFAULT_CARD_ID = "pjZ8Yt7xiy3b9UfffRIA4Tm2xTnw"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

DEFAULT_TOKEN_TTL_S = 7200.0
DEFAULT_CLASSIC_OVERLAP_S = 300.0
# stable_token hands out a new token this long before the current one expires (both stay valid).
DEFAULT_STABLE_RENEW_S = 300.0
DEFAULT_MEDIA_TTL_S = 3 * 24 * 3600.0

ENV_HOST = "WECHAT_SANDBOX_HOST"
ENV_PORT = "WECHAT_SANDBOX_PORT"
ENV_APPID = "WECHAT_SANDBOX_APPID"
ENV_SECRET = "WECHAT_SANDBOX_SECRET"
ENV_CARD_IDS = "WECHAT_SANDBOX_CARD_IDS"
ENV_TOKEN_TTL_S = "WECHAT_SANDBOX_TOKEN_TTL_S"
ENV_CLASSIC_OVERLAP_S = "WECHAT_SANDBOX_CLASSIC_OVERLAP_S"
ENV_STABLE_RENEW_S = "WECHAT_SANDBOX_STABLE_RENEW_S"
ENV_MEDIA_TTL_S = "WECHAT_SANDBOX_MEDIA_TTL_S"
ENV_ADMIN_TOKEN = "WECHAT_SANDBOX_ADMIN_TOKEN"
ENV_TOKENS_FILE = "WECHAT_SANDBOX_TOKENS_FILE"
ADMIN_TOKEN_HEADER = "X-Sandbox-Admin-Token"

# The keys POST /_sandbox/config accepts.
RUNTIME_KEYS = frozenset(
    {
        "token_ttl_s",
        "classic_overlap_s",
        "stable_renew_s",
        "media_ttl_s",
        "card_ids",
        "apps",
        "authorize_by_default",
        "max_pdf_bytes",
        "daily_insert_limit",
    }
)


class SettingsError(ValueError):
    """A setting has a wrong type or value."""


def _seconds(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SettingsError(f"{name} must be a number of seconds")
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, not {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise SettingsError(f"{name} must be finite")
    if number < 0 or (positive and number == 0):
        raise SettingsError(f"{name} must be {'> 0' if positive else '>= 0'}")
    return number


def _card_ids(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SettingsError("card_ids must be a list of strings (or a comma-separated string)")
    return [v for v in value if v]


def _apps(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
    ):
        raise SettingsError("apps must be an object {appid: secret} of non-empty strings")
    return dict(value)


@dataclass
class Settings:
    """Everything that shapes the sandbox's behaviour. Times are in seconds (floats allowed)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    apps: dict[str, str] = field(default_factory=lambda: {DEFAULT_APPID: DEFAULT_SECRET})
    card_ids: list[str] = field(default_factory=lambda: [DEFAULT_CARD_ID])
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S
    classic_overlap_s: float = DEFAULT_CLASSIC_OVERLAP_S
    stable_renew_s: float = DEFAULT_STABLE_RENEW_S
    media_ttl_s: float = DEFAULT_MEDIA_TTL_S
    # Orders count as authorised unless the admin API marks them otherwise.
    authorize_by_default: bool = True
    # WeChat's setpdf size limit is not documented: no limit unless configured (then 72040).
    max_pdf_bytes: int | None = None
    # Successful insertbill calls per appid and Beijing calendar day before 72057 "today insert
    # limit" (WeChat's number is not documented): off unless configured.
    daily_insert_limit: int | None = None
    # Start-up only, never shown by the admin API: its credential and the issued-tokens file.
    admin_token: str | None = field(default=None, repr=False)
    tokens_file: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        settings = cls()
        settings.host = env.get(ENV_HOST) or DEFAULT_HOST
        port = env.get(ENV_PORT)
        if port:
            try:
                settings.port = int(port)
            except ValueError:
                raise SettingsError(f"{ENV_PORT} must be an integer, not {port!r}") from None
        appid = env.get(ENV_APPID) or DEFAULT_APPID
        secret = env.get(ENV_SECRET) or DEFAULT_SECRET
        settings.apps = {appid: secret}
        settings.admin_token = env.get(ENV_ADMIN_TOKEN) or None
        settings.tokens_file = env.get(ENV_TOKENS_FILE) or None
        if env.get(ENV_CARD_IDS):
            settings.card_ids = _card_ids(env[ENV_CARD_IDS])
        updates: dict[str, Any] = {}
        for key, var in (
            ("token_ttl_s", ENV_TOKEN_TTL_S),
            ("classic_overlap_s", ENV_CLASSIC_OVERLAP_S),
            ("stable_renew_s", ENV_STABLE_RENEW_S),
            ("media_ttl_s", ENV_MEDIA_TTL_S),
        ):
            if env.get(var):
                updates[key] = env[var]
        settings.update(updates)
        return settings

    def copy(self) -> Settings:
        return copy.deepcopy(self)

    def update(self, updates: Mapping[str, Any]) -> None:
        """Apply run-time updates; all or nothing. Raises SettingsError on a bad key or value."""
        unknown = set(updates) - RUNTIME_KEYS
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        new: dict[str, Any] = {}
        for key, value in updates.items():
            if key in ("token_ttl_s", "media_ttl_s"):
                new[key] = _seconds(key, value, positive=True)
            elif key in ("classic_overlap_s", "stable_renew_s"):
                new[key] = _seconds(key, value, positive=False)
            elif key == "card_ids":
                new[key] = _card_ids(value)
            elif key == "apps":
                new[key] = _apps(value)
            elif key == "authorize_by_default":
                if not isinstance(value, bool):
                    raise SettingsError("authorize_by_default must be a boolean")
                new[key] = value
            elif key in ("max_pdf_bytes", "daily_insert_limit"):
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or value <= 0
                ):
                    raise SettingsError(f"{key} must be a positive integer or null")
                new[key] = value
        for key, value in new.items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "apps": sorted(self.apps),  # the appids: a secret is never in an answer
            "card_ids": list(self.card_ids),
            "token_ttl_s": self.token_ttl_s,
            "classic_overlap_s": self.classic_overlap_s,
            "stable_renew_s": self.stable_renew_s,
            "media_ttl_s": self.media_ttl_s,
            "authorize_by_default": self.authorize_by_default,
            "max_pdf_bytes": self.max_pdf_bytes,
            "daily_insert_limit": self.daily_insert_limit,
        }
