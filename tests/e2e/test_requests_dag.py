"""End to end: the DAG `nontax_requests` run by Airflow (`airflow dags test`), real Postgres, the
sandbox: a refusal and a void carried out, and a run that goes red when a request cannot be."""

from __future__ import annotations

import json

import psycopg2
import pytest

from airflow_desk import AirflowDesk
from dag_files import parse_frequent_dag
from factories import make_order, write_pdf
from nontax_dev.airflow_run import REQUESTS_DAG_ID, dags_test
from wechat_nontax.requests.contract import request_action

pytestmark = pytest.mark.e2e


class Desk(AirflowDesk):
    """The order database, the sandbox and one Airflow home for both DAGs."""

    def load(self, n):
        orders = [make_order(i) for i in range(n)]
        for order in orders:
            write_pdf(self.pdf_root, order)
        self.store.upsert_orders(orders)
        return orders

    def issue(self, order_ids):
        result = dags_test(self.env, {"order_ids": order_ids})
        assert result.run_state == "success", result.output[-3000:]

    def ask(self, order_id, kind, reason):
        conn = psycopg2.connect(self.dsn)
        try:
            answer = request_action(conn, order_id, kind, reason, "duty@unit")
        finally:
            conn.close()
        assert answer.accepted, answer.reason

    def carry_out(self):
        return self.run(REQUESTS_DAG_ID)


@pytest.fixture
def desk(orders_db, sandbox, tmp_path_factory, tmp_path):
    d = Desk(orders_db, sandbox, tmp_path_factory.mktemp("airflow-requests"), tmp_path / "pdfs")
    yield d
    d.store.close()


def test_the_requests_dag_imports_cleanly_and_runs_alone_every_few_minutes():
    dag = parse_frequent_dag("nontax_requests.py", REQUESTS_DAG_ID, "*/5 * * * *")
    assert dag.get_task("carry_out_requests").pool == "wechat_nontax"


def test_a_refusal_and_a_void_are_carried_out_by_a_dag_run(desk):
    desk.load(3)
    desk.issue(["T00000001"])
    code = desk.store.get_row("T00000001")["code"]
    desk.ask("T00000000", "refuse", "订单已退款,不再开票")
    desk.ask("T00000001", "void", "财政平台已冲红")

    result = desk.carry_out()
    assert result.run_state == "success", result.output[-3000:]
    assert result.states("carry_out_requests") == {-1: "success"}
    assert result.states("report") == {-1: "success"}

    refused, voided = desk.store.get_row("T00000000"), desk.store.get_row("T00000001")
    assert refused["status"] == "refused" and refused["code"] is None
    assert (voided["status"], voided["code"]) == ("cancelled", code)
    assert desk.sandbox.rejections()["T00000000"]["reason"] == "订单已退款,不再开票"
    assert desk.sandbox.statuses()["T00000001"]["reimburse_status"] == "INVOICE_REIMBURSE_CANCEL"
    assert desk.sql(
        "SELECT order_id, kind, status, run_id FROM nontax.bill_request ORDER BY order_id"
    ) == [
        ("T00000000", "refuse", "done", result.run_id),
        ("T00000001", "void", "done", result.run_id),
    ]
    # Every hold ended; the next issuing run leaves both alone and issues the third order.
    assert desk.sql("SELECT count(*) FROM nontax.bill_order WHERE claimed_by IS NOT NULL") == [(0,)]
    desk.issue([])
    assert sorted(b["order_id"] for b in desk.sandbox.bills()) == ["T00000001", "T00000002"]
    assert desk.sandbox.calls()["rejectinsert"] == 1
    assert desk.sandbox.calls()["updatestatus"] == 1


def test_a_run_whose_request_cannot_be_carried_out_is_red_with_the_reason(desk):
    desk.load(2)
    desk.issue(["T00000001"])
    desk.sandbox.set_bill_status("T00000001", "INVOICE_REIMBURSE_CLOSURE")
    desk.ask("T00000001", "void", "冲红")
    # The unit's own system asks to void an order that has no bill.
    desk.sql(
        "INSERT INTO nontax.bill_request (order_id, kind, reason, requested_by) "
        "VALUES ('T00000000', 'void', 'refund', 'his')"
    )
    result = desk.carry_out()
    assert result.run_state == "failed"
    assert result.states("carry_out_requests") == {-1: "success"}
    assert result.states("report") == {-1: "failed"}
    assert "2 requests of this run were not carried out" in result.output
    rows = desk.sql("SELECT order_id, status, errcode FROM nontax.bill_request ORDER BY 1")
    assert rows == [("T00000000", "refused", None), ("T00000001", "failed", 72061)]
    assert desk.store.get_row("T00000001")["status"] == "inserted"
    assert desk.sandbox.calls().get("updatestatus", 0) == 1


def test_without_an_access_token_nothing_is_sent_and_the_run_is_red(desk):
    desk.load(1)
    desk.ask("T00000000", "refuse", "refunded")
    wrong = json.loads(desk.env["AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT"])
    wrong["password"] = "not-the-secret"
    desk.env["AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT"] = json.dumps(wrong)
    result = desk.carry_out()
    assert result.run_state == "failed"
    assert result.states("carry_out_requests") == {-1: "failed"}
    assert result.states("report") == {-1: "failed"}
    assert "carry_out_requests did not finish" in result.output
    assert desk.sql(
        "SELECT status, outcome LIKE 'not sent: no access token%%' FROM nontax.bill_request"
    ) == [("pending", True)]
    assert desk.sandbox.calls().get("rejectinsert", 0) == 0
    assert desk.store.get_row("T00000000")["held_by"] is None
