"""The order schema's migrations against a real Postgres."""

from __future__ import annotations

import psycopg2
import pytest

from wechat_nontax.store.migrate import MigrationError, current_version, known_migrations, migrate


def test_applying_twice_is_a_no_op(orders_db):
    assert current_version(orders_db) == len(known_migrations())
    assert migrate(orders_db) == []


def test_refuses_a_database_with_a_newer_schema(orders_db):
    conn = psycopg2.connect(orders_db)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO nontax.schema_version (version, name, checksum) VALUES (999, 'x', 'y')"
        )
    try:
        with pytest.raises(MigrationError, match="newer than this checkout"):
            migrate(orders_db)
    finally:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM nontax.schema_version WHERE version = 999")
        conn.close()


def test_refuses_an_edited_migration(orders_db, tmp_path):
    for migration in known_migrations():
        (tmp_path / f"{migration.version:04d}_{migration.name}.sql").write_text(
            migration.sql + "\n-- edited\n"
        )
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(orders_db, tmp_path)


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("fee", 0, "bill_order_fee_positive"),
        ("fee", -5, "bill_order_fee_positive"),
        ("status", "'lost'", "bill_order_status_known"),
        ("order_id", "''", "bill_order_order_id_nonempty"),
        ("status", "'inserted'", "bill_order_inserted_has_code"),
        ("status", "'failed'", "bill_order_needs_reason"),
    ],
)
def test_constraints_live_in_the_database(orders_db, column, value, constraint):
    values = {
        "order_id": "'X1'", "card_id": "'c'", "appid": "'a'", "fee": "1", "title": "'t'",
        "billing_time": "1700000000", "billing_no": "'n'", "billing_code": "'c'",
        "status": "'authorized'",
    }  # fmt: skip
    values[column] = str(value)
    conn = psycopg2.connect(orders_db)
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.IntegrityError) as caught:
            cur.execute(
                f"INSERT INTO nontax.bill_order ({', '.join(values)}) "
                f"VALUES ({', '.join(values.values())})"
            )
        assert caught.value.diag.constraint_name == constraint
    finally:
        conn.close()


def test_history_is_append_only(orders_db):
    conn = psycopg2.connect(orders_db)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO nontax.bill_order (order_id, card_id, appid, fee, title, "
                "billing_time, billing_no, billing_code) "
                "VALUES ('H1', 'c', 'a', 1, 't', 1700000000, 'n', 'c')"
            )
            cur.execute(
                "INSERT INTO nontax.bill_attempt (order_id, step, outcome) "
                "VALUES ('H1', 'load', 'new')"
            )
            for statement in (
                "UPDATE nontax.bill_attempt SET outcome = 'x'",
                "DELETE FROM nontax.bill_attempt",
                "TRUNCATE nontax.bill_attempt",
            ):
                with pytest.raises(psycopg2.errors.RaiseException, match="append-only"):
                    cur.execute(statement)
    finally:
        conn.close()
