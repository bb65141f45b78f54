"""What a user would write instead: one mapped task per order, HTTP calls through HttpHook.

The benchmark's baseline, not part of the pipeline. Each mapped task fetches a token, uploads
the order's PDF, inserts the bill and writes the result back: the straightforward DAG, limited
to Airflow's mapping length (1,024), with every order paying a task instance's scheduling and
start-up cost. Only loaded by `make bench` (its dags folder holds this file beside the
pipeline's).
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task

PER_ORDER_PREFIX = "PER"


@dag(
    dag_id="bench_per_order",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["benchmark"],
)
def bench_per_order():
    @task
    def due_orders() -> list[dict]:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        rows = PostgresHook(postgres_conn_id="nontax_orders_db").get_records(
            "SELECT order_id, card_id, appid, fee, title, billing_time, billing_no, "
            "billing_code, pdf_path FROM nontax.bill_order "
            "WHERE status = 'authorized' AND order_id LIKE %s ORDER BY order_id LIMIT 1000",
            parameters=(f"{PER_ORDER_PREFIX}%",),
        )
        names = ("order_id", "card_id", "appid", "fee", "title", "billing_time", "billing_no",
                 "billing_code", "pdf_path")  # fmt: skip
        return [dict(zip(names, row, strict=True)) for row in rows]

    # No pool: as many at once as the executor runs (a pool would only slow the baseline down).
    @task
    def issue(order: dict) -> str:
        from airflow.providers.http.hooks.http import HttpHook
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection("wechat_nontax_default")
        http = HttpHook(method="POST", http_conn_id="wechat_nontax_default")
        token = http.run(
            "/cgi-bin/stable_token",
            json={"grant_type": "client_credential", "appid": conn.login,
                  "secret": conn.password, "force_refresh": False},
        ).json()["access_token"]  # fmt: skip
        with open(os.path.join(os.environ["NONTAX_PDF_ROOT"], order["pdf_path"]), "rb") as pdf:
            media = http.run(
                f"/card/invoice/platform/setpdf?access_token={token}",
                files={"pdf": ("bill.pdf", pdf.read(), "application/pdf")},
            ).json()["s_media_id"]
        bill = {
            "fee": order["fee"],
            "title": order["title"],
            "billing_time": order["billing_time"],
            "billing_no": order["billing_no"],
            "billing_code": order["billing_code"],
            "s_pdf_media_id": str(media),
        }
        body = {
            "order_id": order["order_id"],
            "card_id": order["card_id"],
            "appid": order["appid"],
            "card_ext": {"user_card": {"invoice_user_data": bill}},
        }
        answer = http.run(f"/nontax/insertbill?access_token={token}", json=body).json()
        PostgresHook(postgres_conn_id="nontax_orders_db").run(
            "UPDATE nontax.bill_order SET status = 'inserted', code = %s, openid = %s, "
            "inserted_at = now(), s_pdf_media_id = %s, pdf_uploaded_at = now() "
            "WHERE order_id = %s",
            parameters=(answer["code"], answer["openid"], str(media), order["order_id"]),
        )
        return answer["code"]

    issue.expand(order=due_orders())


bench_per_order()
