"""Secrets in the docs and deployment files: the Connection examples of the README and docs/
(docs/configuration.md holds them) for anything but the local sandbox and database, the compose
file and `.env.example` carry placeholders (or the sandbox's public test secret), never a value
that could be real. (Task logs, XCom and rendered fields of a real scheduler run are checked by
the stack's tests; the chaos runner scans what its runs leave.)"""

from __future__ import annotations

import re

import pytest

from nontax_dev.airflow_run import ROOT
from wechat_sandbox.client import DEFAULT_SECRET

DOCS = "\n".join(
    path.read_text(encoding="utf-8")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
)
EXAMPLES = re.findall(r"export (AIRFLOW_CONN_\w+)='([^']*)'", DOCS)
LOCAL = ("127.0.0.1", "localhost")


def _secrets_in(value: str) -> list[str]:
    """Passwords in an example: a JSON `password`, or the password of a URI's user info."""
    return re.findall(r'"password":\s*"([^"]*)"', value) + re.findall(
        r"://[^:/@\s]+:([^@\s]+)@", value
    )


def test_the_docs_have_connection_examples_to_check():
    assert len(EXAMPLES) >= 4
    assert any(not any(h in value for h in LOCAL) for _, value in EXAMPLES)


def test_connection_examples_beyond_the_sandbox_hold_placeholders_only():
    for name, value in EXAMPLES:
        if any(host in value for host in LOCAL):
            continue  # the sandbox and a local database: documented as not secret
        for secret in _secrets_in(value):
            assert re.fullmatch(r"<[^<>]+>", secret), (name, secret)


def test_the_sandbox_secret_appears_only_beside_the_sandbox():
    for name, value in EXAMPLES:
        if DEFAULT_SECRET in value:
            assert "127.0.0.1" in value, name


COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
# A YAML key naming a secret, and its value; a JSON "password"/"secret" inside a value.
_YAML_SECRET = re.compile(r"(?i)^\s*[A-Za-z_]*(?:password|secret|fernet_key)[A-Za-z_]*\s*:\s*(.+)$")
_JSON_SECRET = re.compile(r'(?i)"(?:password|secret)"\s*:\s*"([^"]*)"')


@pytest.mark.skipif(not COMPOSE.exists(), reason="no docker-compose.yaml in this checkout")
def test_the_compose_file_takes_every_secret_from_the_environment():
    lines = [line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")]
    checked = 0
    for line in lines:
        for value in [*_YAML_SECRET.findall(line), *_JSON_SECRET.findall(line)]:
            checked += 1
            assert value.startswith("${"), line
        for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", line):
            assert password.startswith("${"), line
    assert checked >= 3


@pytest.mark.skipif(not ENV_EXAMPLE.exists(), reason="no .env.example in this checkout")
def test_the_env_example_leaves_every_secret_empty_but_the_sandboxs():
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.lstrip().startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if re.search(r"PASSWORD|SECRET|FERNET|_KEY", key):
            assert value.strip() in ("", DEFAULT_SECRET), line
