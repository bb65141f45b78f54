"""Raw WeChat calls against the sandbox, shared by its tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wechat_sandbox.client import SandboxAdmin, SandboxWeChat


@pytest.fixture
def wx(sandbox: SandboxAdmin) -> Iterator[SandboxWeChat]:
    client = SandboxWeChat(sandbox.base_url)
    yield client
    client.close()


@pytest.fixture
def token(wx: SandboxWeChat) -> str:
    return wx.access_token()
