"""Waiting in a test for what another process or thread does: for the state itself, never for
a guessed time (a loaded machine loses such guesses)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.1
) -> T:
    """The first truthy value of `predicate()`; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
