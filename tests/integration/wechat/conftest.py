"""Fixtures of the hook's tests: a hook on the sandbox and the test's order database, and forked
processes each asking their own hook for the same shared value at once."""

from __future__ import annotations

import multiprocessing

import pytest

from wechat_nontax.wechat.hook import WeChatNonTaxHook


@pytest.fixture
def hook(orders_db, wechat_conn):
    hook = WeChatNonTaxHook()
    yield hook
    hook.close()


def _ask(queue, method: str) -> None:
    hook = WeChatNonTaxHook()
    try:
        queue.put(getattr(hook, method)())
    finally:
        hook.close()


@pytest.fixture
def asked_at_once(orders_db, wechat_conn):
    """`ask(method, processes)`: the set of what `processes` forked processes answered, each
    calling `method` of a hook of its own at the same time (as a pool's tasks do); every
    process must have ended cleanly."""

    def ask(method: str, processes: int) -> set:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_ask, args=(queue, method)) for _ in range(processes)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        answers = {queue.get(timeout=5) for _ in procs}
        assert all(p.exitcode == 0 for p in procs)
        return answers

    return ask
