"""The documented `make` commands that take a person's text (ORDER=, REASON=, FILE=), run for
real against a scratch order database: the text reaches the program byte for byte, whatever
it holds (`$`, backticks, quotes), and the shell runs none of it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg2
import pytest

from factories import make_order, order_line
from nontax_dev.airflow_run import ROOT

# Shell and make both read these: `$5` is a make variable, `...` and $(...) a command to run.
HOSTILE = "退费$50元,见`单据` $(echo x) ${HOME} 'a' \"b\" \\ $$ % #"


def make(target: str, orders_db: str, tmp_path: Path, **variables: str):
    """`make TARGET NAME=value...` as a person types it (each value one argument), the install
    step taken as done; a `touch ran-...` in a value would leave its file in the project's
    folder (make's, where its shell runs) if the shell ran it."""
    env = {**os.environ, "AIRFLOW_CONN_NONTAX_ORDERS_DB": orders_db}
    for name in ("ORDER", "REASON", "FILE"):
        env.pop(name, None)
    argv = ["make", "-s", "-C", str(ROOT), "-o", ".venv/.installed-stamp", target]
    argv += [f"{name}={value}" for name, value in variables.items()]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path, check=False)
    ran = sorted(ROOT.glob("ran-*"))
    for path in ran:
        path.unlink()
    assert ran == [], "the shell ran part of the text"
    return done


def requests_of(orders_db: str, order_id: str) -> list[tuple[str, str]]:
    conn = psycopg2.connect(orders_db)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT kind, reason FROM nontax.bill_request WHERE order_id = %s "
                "ORDER BY request_id",
                (order_id,),
            )
            return cur.fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "reason",
    [
        "退费$50元,见`单据`",
        "退费`touch ran-backtick`元 $(touch ran-dollar)",
        'it\'s "refunded" $HOME ${PATH} $$ \\n 100%',
        HOSTILE,
    ],
)
def test_make_refuse_records_the_reason_byte_for_byte(store, orders_db, tmp_path, reason):
    store.upsert_orders([make_order(1)])
    done = make("refuse", orders_db, tmp_path, ORDER="T00000001", REASON=reason)
    assert done.returncode == 0, done.stderr
    assert requests_of(orders_db, "T00000001") == [("refuse", reason)]


def test_make_void_records_the_reason_byte_for_byte(store, orders_db, tmp_path):
    store.upsert_orders([make_order(2)])
    conn = psycopg2.connect(orders_db)
    conn.autocommit = True
    with conn.cursor() as cur:  # an issued bill, as a run records it
        cur.execute(
            "UPDATE nontax.bill_order SET status = 'inserted', code = 'C-1', openid = 'o-1', "
            "inserted_at = now() "
            "WHERE order_id = 'T00000002'"
        )
    conn.close()
    done = make("void", orders_db, tmp_path, ORDER="T00000002", REASON=HOSTILE)
    assert done.returncode == 0, done.stderr
    assert requests_of(orders_db, "T00000002") == [("void", HOSTILE)]


def test_a_reason_of_two_lines_is_refused_with_the_reason_and_nothing_is_asked(
    store, orders_db, tmp_path
):
    store.upsert_orders([make_order(3)])
    done = make("refuse", orders_db, tmp_path, ORDER="T00000003", REASON="退费\n`touch ran-nl`")
    assert "Error 1" in done.stderr  # the program's exit status: refused
    assert "refused" in done.stderr and "control or invisible characters" in done.stderr
    assert requests_of(orders_db, "T00000003") == []


def test_make_history_and_load_orders_take_the_text_as_it_is(store, orders_db, tmp_path):
    order_id = "T`touch ran-history`$1"
    done = make("history", orders_db, tmp_path, ORDER=order_id)
    assert "Error 1" in done.stderr
    assert f"no order {order_id}" in done.stderr
    folder = tmp_path / "in $HOME `touch ran-file`"
    folder.mkdir()
    orders = folder / "orders $1.jsonl"
    orders.write_text(order_line(make_order(4)) + "\n", encoding="utf-8")
    done = make("load-orders", orders_db, tmp_path, FILE=str(orders))
    assert done.returncode == 0, done.stderr
    assert store.get_row("T00000004") is not None
