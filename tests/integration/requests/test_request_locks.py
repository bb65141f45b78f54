"""Two tries carrying out the same requests at once (a manual run beside the scheduled one, a
zombie try beside its successor), on real Postgres and the sandbox: they lock an order and its
request in one order, so neither meets a deadlock, and each request is carried out once."""

from __future__ import annotations

import threading

import psycopg2

from wechat_nontax.requests.contract import request_action
from wechat_nontax.requests.runner import RequestRunner
from wechat_nontax.requests.store import RequestStore
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.wechat.hook import WeChatNonTaxHook

ROUNDS = 12
PER_ROUND = 40


def _carry_out(dsn: str, run_id: str, start: threading.Barrier, errors: list) -> None:
    conn = psycopg2.connect(dsn)
    store = RequestStore(conn)
    hook = WeChatNonTaxHook()
    try:
        runner = RequestRunner(
            hook, store, quotas=OrderStore(conn), run_id=run_id,
            holder=f"nontax_requests|{run_id}|carry_out_requests|-1|1", hold_s=120,
            sleep=lambda s: None,
        )  # fmt: skip
        start.wait(10)
        runner.run()
    except Exception as exc:  # the test reports it
        errors.append(exc)
    finally:
        hook.close()
        store.close()


def test_two_tries_over_the_same_requests_never_deadlock_and_carry_each_out_once(env):
    errors: list = []
    ids = []
    for n in range(ROUNDS):
        orders = env.orders(PER_ROUND, start=n * PER_ROUND)
        conn = psycopg2.connect(env.dsn)
        try:
            for order in orders:
                answer = request_action(conn, order.order_id, "refuse", "refunded", "duty@unit")
                assert answer.accepted, answer.reason
        finally:
            conn.close()
        ids += [o.order_id for o in orders]
        start = threading.Barrier(2)
        tries = [
            threading.Thread(target=_carry_out, args=(env.dsn, run_id, start, errors))
            for run_id in (f"scheduled__{n}", f"manual__{n}")
        ]
        for t in tries:
            t.start()
        for t in tries:
            t.join(120)
        assert not errors, f"round {n}: {errors[0]!r}"
        # What one try found held by the other is carried out by the next run.
        _carry_out(env.dsn, f"scheduled__{n}b", threading.Barrier(1), errors)
        assert not errors, f"round {n}: {errors[0]!r}"

    assert env.sql(
        "SELECT status, count(*) FROM nontax.bill_request WHERE kind = 'refuse' GROUP BY 1"
    ) == [("done", len(ids))]
    assert env.sql(
        "SELECT count(*) FROM nontax.bill_order WHERE order_id = ANY(%s) AND status = 'refused'",
        (ids,),
    ) == [(len(ids),)]
    # One refusal on WeChat's side per order: never a second call once one was done.
    rejections = env.sandbox.rejections()
    assert sorted(rejections) == sorted(ids)
    assert all(r["repeats"] == 0 for r in rejections.values())
    assert env.sql("SELECT count(*) FROM nontax.bill_order WHERE held_by IS NOT NULL") == [(0,)]
