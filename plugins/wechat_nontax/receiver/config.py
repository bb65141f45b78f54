"""The receiver's credentials and settings: the Connection `wechat_nontax_callback` (from its
AIRFLOW_CONN_ form, so that the receiver never imports Airflow) or the environment. Nothing
here is ever logged; `Credentials.__repr__` shows no secret."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from wechat_nontax import settings as s
from wechat_nontax.receiver.callback import Credentials
from wechat_nontax.receiver.crypto import aes_key


class ConfigError(ValueError):
    """The receiver cannot start: the message names the setting, never its value."""


@dataclass(frozen=True)
class ReceiverSettings:
    host: str
    port: int
    spool_dir: str
    replay_window_s: float
    max_body: int
    record_budget_s: float
    replay_every_s: float

    @classmethod
    def from_env(cls) -> ReceiverSettings:
        return cls(
            host=str(s.receiver_setting(s.RECEIVER_HOST_ENV, s.DEFAULT_RECEIVER_HOST)),
            port=int(s.receiver_setting(s.RECEIVER_PORT_ENV, s.DEFAULT_RECEIVER_PORT)),
            spool_dir=str(s.receiver_setting(s.RECEIVER_SPOOL_ENV, s.DEFAULT_RECEIVER_SPOOL)),
            replay_window_s=float(
                s.receiver_setting(s.RECEIVER_REPLAY_WINDOW_ENV, s.DEFAULT_RECEIVER_REPLAY_WINDOW_S)
            ),
            max_body=int(s.receiver_setting(s.RECEIVER_MAX_BODY_ENV, s.DEFAULT_RECEIVER_MAX_BODY)),
            record_budget_s=float(
                s.receiver_setting(s.RECEIVER_RECORD_BUDGET_ENV, s.DEFAULT_RECEIVER_RECORD_BUDGET_S)
            ),
            replay_every_s=float(
                s.receiver_setting(s.RECEIVER_REPLAY_EVERY_ENV, s.DEFAULT_RECEIVER_REPLAY_EVERY_S)
            ),
        )


def credentials_from_env() -> Credentials:
    """The Connection when AIRFLOW_CONN_WECHAT_NONTAX_CALLBACK is set, else NONTAX_CALLBACK_*."""
    conn_var = f"AIRFLOW_CONN_{s.CALLBACK_CONN_ID.upper()}"
    if os.environ.get(conn_var):
        token, appid, extra = _from_connection(conn_var, os.environ[conn_var])
        current, previous = extra.get("encoding_aes_key"), extra.get("previous_encoding_aes_key")
    else:
        token = os.environ.get(s.CALLBACK_TOKEN_ENV, "")
        appid = os.environ.get(s.CALLBACK_APPID_ENV, "")
        current = os.environ.get(s.CALLBACK_AES_KEY_ENV)
        previous = os.environ.get(s.CALLBACK_PREVIOUS_AES_KEY_ENV)
        conn_var = f"{s.CALLBACK_TOKEN_ENV}/{s.CALLBACK_APPID_ENV}"
    if not token or not appid:
        raise ConfigError(f"the callback token and appid are not set (set {conn_var})")
    if previous and not current:
        raise ConfigError("a previous EncodingAESKey without a current one")
    keys = []
    for name, value in (("encoding_aes_key", current), ("previous_encoding_aes_key", previous)):
        if value:
            try:
                keys.append(aes_key(value))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
    return Credentials(token=token, appid=appid, aes_keys=tuple(keys))


def _from_connection(name: str, value: str) -> tuple[str, str, dict[str, str]]:
    """(token, appid, extra) of a Connection in Airflow's URI or JSON form."""
    if value.lstrip().startswith("{"):
        try:
            spec = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{name} is not valid JSON") from None
        extra = spec.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra or "{}")
        return spec.get("password") or "", spec.get("login") or "", extra
    uri = urlsplit(value)
    query = dict(parse_qsl(uri.query))
    extra = json.loads(query["__extra__"]) if "__extra__" in query else query
    return unquote(uri.password or ""), unquote(uri.username or ""), extra
