"""The order database as the Bills page opens it: the Airflow Connection `nontax_orders_db`,
one connection per request, closed when the page is made."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi import HTTPException, status

from wechat_nontax.store.orders import OrderStore
from wechat_nontax.ui.view import printable


@contextlib.contextmanager
def order_db() -> Iterator[tuple[OrderStore, Any]]:
    """The order store and its connection (for the requests' statements), one per request."""
    from wechat_nontax.store.connection import connect

    conn = connect(application_name="nontax_bills_view")
    store = OrderStore(conn, write_retry_s=0)
    try:
        yield store, conn
    finally:
        store.close()


@contextlib.contextmanager
def order_store() -> Iterator[OrderStore]:
    with order_db() as (store, _):
        yield store


def order_or_404(store: OrderStore, order_id: str) -> dict[str, Any]:
    row = store.get_row(printable(order_id, "order id"))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such order")
    return row
