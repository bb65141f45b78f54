"""The receiver's credentials from the Connection's URI or JSON form, or the environment."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from wechat_nontax.receiver.config import ConfigError, ReceiverSettings, credentials_from_env
from wechat_nontax.receiver.crypto import aes_key

KEY = base64.b64encode(b"n" * 32).decode()[:43]
OLD = base64.b64encode(b"o" * 32).decode()[:43]
CONN = "AIRFLOW_CONN_WECHAT_NONTAX_CALLBACK"


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for name in (CONN, "NONTAX_CALLBACK_TOKEN", "NONTAX_CALLBACK_APPID", "NONTAX_CALLBACK_AES_KEY",
                 "NONTAX_CALLBACK_PREVIOUS_AES_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_the_connection_uri_gives_token_appid_and_both_keys(monkeypatch):
    monkeypatch.setenv(
        CONN,
        f"wechat-callback://wx-unit:{quote('t/k+n', safe='')}@/"
        f"?encoding_aes_key={quote(KEY, safe='')}&previous_encoding_aes_key={quote(OLD, safe='')}",
    )
    creds = credentials_from_env()
    assert (creds.token, creds.appid) == ("t/k+n", "wx-unit")
    assert creds.aes_keys == (aes_key(KEY), aes_key(OLD))


def test_the_connection_json_form(monkeypatch):
    monkeypatch.setenv(
        CONN, json.dumps({"conn_type": "generic", "login": "wx-unit", "password": "tok",
                          "extra": {"encoding_aes_key": KEY}}),
    )  # fmt: skip
    creds = credentials_from_env()
    assert (creds.token, creds.appid, creds.aes_keys) == ("tok", "wx-unit", (aes_key(KEY),))


def test_the_environment_without_a_connection_is_plain_mode(monkeypatch):
    monkeypatch.setenv("NONTAX_CALLBACK_TOKEN", "tok")
    monkeypatch.setenv("NONTAX_CALLBACK_APPID", "wx-unit")
    assert credentials_from_env().aes_keys == ()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "not set"),
        ({"NONTAX_CALLBACK_TOKEN": "tok", "NONTAX_CALLBACK_APPID": "wx",
          "NONTAX_CALLBACK_AES_KEY": "short-secret-key"}, "encoding_aes_key"),
        ({"NONTAX_CALLBACK_TOKEN": "tok", "NONTAX_CALLBACK_APPID": "wx",
          "NONTAX_CALLBACK_PREVIOUS_AES_KEY": KEY}, "previous"),
    ],
)  # fmt: skip
def test_a_bad_configuration_is_named_without_its_value(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message) as error:
        credentials_from_env()
    assert "short-secret-key" not in str(error.value) and KEY not in str(error.value)


def test_the_settings_default_and_follow_the_environment(monkeypatch):
    monkeypatch.delenv("NONTAX_RECEIVER_PORT", raising=False)
    assert ReceiverSettings.from_env().port == 8770
    assert ReceiverSettings.from_env().max_body == 64 * 1024
    monkeypatch.setenv("NONTAX_RECEIVER_PORT", "9100")
    monkeypatch.setenv("NONTAX_RECEIVER_REPLAY_WINDOW_S", "60")
    settings = ReceiverSettings.from_env()
    assert (settings.port, settings.replay_window_s) == (9100, 60.0)
