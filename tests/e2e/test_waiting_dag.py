"""End to end: the DAG `nontax_waiting` run by Airflow (`airflow dags test`), real Postgres, the
sandbox: a waiting order is looked at again when its look is due, not before; inserted once its
payer authorised; failed once it has waited past the deadline."""

from __future__ import annotations

import pytest

from airflow_desk import AirflowDesk
from dag_files import parse_frequent_dag
from factories import make_order, write_pdf
from nontax_dev.airflow_run import DAG_ID, WAITING_DAG_ID
from wechat_nontax.wechat.rules import AUTHORIZATION_RECHECK_S

pytestmark = pytest.mark.e2e


class Desk(AirflowDesk):
    """The order database, the sandbox and one Airflow home for both issuing DAGs."""

    def load(self, *orders):
        for order in orders:
            write_pdf(self.pdf_root, order)
        self.store.upsert_orders(orders)

    def look_due(self, order_id, *, waited_h=None):
        """The order's next look has come (its 15 minutes passed); with `waited_h`, WeChat first
        said it was not authorised that many hours ago."""
        self.sql(
            "UPDATE nontax.bill_order SET not_before = now() - interval '1 second', "
            "auth_wait_since = coalesce(now() - make_interval(hours => %s), auth_wait_since) "
            "WHERE order_id = %s",
            (waited_h, order_id),
        )

    def answers(self, order_id, endpoint):
        return self.sandbox.order_answers(order_id).get(endpoint, {})


@pytest.fixture
def desk(orders_db, sandbox, tmp_path_factory, tmp_path):
    d = Desk(orders_db, sandbox, tmp_path_factory.mktemp("airflow-waiting"), tmp_path / "pdfs")
    yield d
    d.store.close()


def waiting(desk, order):
    """The order loaded and issued by the daily DAG while its payer has not authorised: 72038."""
    desk.load(order)
    desk.sandbox.set_authorization(order.order_id, "unauthorized")
    result = desk.run(DAG_ID, {"order_ids": [order.order_id]})
    assert result.run_state == "success", result.output[-3000:]
    row = desk.store.get_row(order.order_id)
    assert row["status"] == "awaiting_auth" and row["last_errcode"] == 72038


def test_the_waiting_dag_imports_cleanly_and_runs_alone_every_15_minutes():
    dag = parse_frequent_dag("nontax_waiting.py", WAITING_DAG_ID, "*/15 * * * *")
    assert int(AUTHORIZATION_RECHECK_S) == 15 * 60  # a look at every run once due
    assert set(dag.params) == {"max_orders", "workers"}
    assert dag.get_task("claim_orders").scope == "authorization_look_due"
    assert dag.get_task("issue_bills").pool == "wechat_nontax"


def test_a_payer_who_authorises_after_the_first_look_is_issued_by_the_next_waiting_run(desk):
    order = make_order(1)
    waiting(desk, order)
    oid = order.order_id
    # An order of another run needs a person: the daily run's business, not this run's.
    bad = make_order(2, title="")
    desk.load(bad)
    assert desk.run(DAG_ID, {"order_ids": [bad.order_id]}).run_state == "failed"

    # Its look is not due yet: the run claims nothing and asks WeChat nothing.
    early = desk.run(WAITING_DAG_ID)
    assert early.run_state == "success", early.output[-3000:]
    assert early.states("issue_bills") == {-1: "skipped"}  # mapped over no batch
    assert desk.answers(oid, "getauthdata") == {}
    assert desk.store.get_row(oid)["status"] == "awaiting_auth"

    # The payer authorises; 15 minutes later the next run looks and inserts.
    desk.sandbox.set_authorization(oid, "authorized")
    desk.look_due(oid)
    result = desk.run(WAITING_DAG_ID)
    assert result.run_state == "success", result.output[-3000:]
    assert result.states("issue_bills") == {0: "success"}
    row = desk.store.get_row(oid)
    assert row["status"] == "inserted"
    assert [(b["order_id"], b["code"]) for b in desk.sandbox.bills()] == [(oid, row["code"])]
    assert desk.answers(oid, "getauthdata") == {"0": 1}
    assert desk.answers(oid, "insertbill") == {"72038": 1, "0": 1}
    steps = [(a.step, a.outcome, a.run_id) for a in desk.store.history(oid)][-2:]
    assert steps == [
        ("authorization", "authorized", result.run_id),
        ("insert", "inserted", result.run_id),
    ]
    assert desk.sql("SELECT count(*) FROM nontax.bill_order WHERE claimed_by IS NOT NULL") == [(0,)]


def test_a_payer_who_never_authorises_is_looked_at_each_time_then_fails_after_24_hours(desk):
    order = make_order(1)
    waiting(desk, order)
    oid = order.order_id
    for look in (1, 2):
        desk.look_due(oid)
        result = desk.run(WAITING_DAG_ID)
        assert result.run_state == "success", result.output[-3000:]
        row = desk.store.get_row(oid)
        assert row["status"] == "awaiting_auth" and "never auth" in row["reason"]
        assert desk.answers(oid, "getauthdata") == {"0": look}
        # Asked again only once the next 15 minutes have passed.
        left = desk.sql(
            "SELECT extract(epoch FROM not_before - now()) FROM nontax.bill_order "
            "WHERE order_id = %s",
            (oid,),
        )[0][0]
        assert AUTHORIZATION_RECHECK_S - 120 < float(left) <= AUTHORIZATION_RECHECK_S
    # Past 24 hours of looks, the next one fails it for a person: the run is red.
    desk.look_due(oid, waited_h=24)
    result = desk.run(WAITING_DAG_ID)
    assert result.run_state == "failed"
    row = desk.store.get_row(oid)
    assert row["status"] == "failed" and "not authorised 24 h" in row["reason"]
    assert desk.answers(oid, "getauthdata") == {"0": 3}
    assert desk.answers(oid, "insertbill") == {"72038": 1}
