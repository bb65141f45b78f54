"""Fixtures of the integration tests: a batch issuer on the sandbox and a throwaway order
database, the requests' store, a cursor on that database."""

from __future__ import annotations

import psycopg2
import pytest

from factories import held, make_order, write_pdf
from wechat_nontax.issuing.batch import BatchIssuer
from wechat_nontax.issuing.batch_settings import Settings
from wechat_nontax.issuing.pdfs import read_pdf
from wechat_nontax.requests.store import RequestStore
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore
from wechat_nontax.wechat.hook import WeChatNonTaxHook
from wechat_nontax.wechat.validation import Limits


@pytest.fixture
def env(orders_db, wechat_conn, tmp_path):
    store = OrderStore(connect_dsn(orders_db))
    hook = WeChatNonTaxHook()
    yield Env(orders_db, wechat_conn, store, hook, tmp_path)
    hook.close()
    store.close()


@pytest.fixture
def cur(orders_db):
    """A cursor on the test's order database, each statement committed at once (as another
    process would see it)."""
    conn = psycopg2.connect(orders_db)
    conn.autocommit = True
    with conn.cursor() as cur:
        yield cur
    conn.close()


@pytest.fixture
def requests_store(env):
    """The requests' store (`nontax_requests`'s statements) on the test's order database."""
    store = RequestStore(psycopg2.connect(env.dsn))
    yield store
    store.close()


class Env:
    def __init__(self, dsn, sandbox, store, hook, pdf_root):
        self.dsn, self.sandbox, self.store, self.hook, self.pdf_root = (
            dsn, sandbox, store, hook, pdf_root
        )  # fmt: skip

    def orders(self, n, start=0, **fields):
        orders = [make_order(i, **fields) for i in range(start, start + n)]
        for order in orders:
            write_pdf(self.pdf_root, order)
        self.store.upsert_orders(orders)
        return orders

    def issuer(self, *, run_id="run-1", holder=None, api=None, store=None, reader=None,
               sleep=lambda s: None, **settings):  # fmt: skip
        """A batch issuer on the sandbox; the policy's waits are asserted, not slept through."""
        settings.setdefault("time_budget_s", 20)
        settings.setdefault("max_workers", 8)
        return BatchIssuer(
            api or self.hook,
            store or self.store,
            Settings(pdf_root=str(self.pdf_root), **settings),
            run_id=run_id,
            holder=holder,
            read_pdf=reader or (lambda root, rel, limit: read_pdf(root, rel, max_bytes=limit)),
            sleep=sleep,
        )

    def issue(self, orders, **kwargs):
        ids = [o.order_id if hasattr(o, "order_id") else o for o in orders]
        return {r.order_id: r for r in self.issuer(**kwargs).run(ids)}

    def upload_only(self, orders):
        """Orders left uploaded, as a batch that stopped between an upload and its insert."""
        for order in orders:
            pdf = read_pdf(str(self.pdf_root), order.pdf_path, max_bytes=Limits().max_pdf_bytes)
            media_id = self.hook.upload_pdf(pdf, f"{order.order_id}.pdf")
            hold = held(self.store, order.order_id, run_id="run-0")
            self.store.record_uploaded(order.order_id, media_id, hold=hold, run_id="run-0")
            self.store.end_hold(hold.holder, [order.order_id], lease_s=0)

    def sql(self, statement, params=()):
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            rows = cur.fetchall() if cur.description else None
        conn.close()
        return rows

    def token_fetches(self):
        return self.sql("SELECT coalesce(sum(fetch_count), 0) FROM nontax.access_token")[0][0]
