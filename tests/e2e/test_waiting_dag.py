"""End to end: the DAG `nontax_waiting` run by Airflow (`airflow dags test`), real Postgres, the
sandbox: orders whose payers authorise between runs are inserted by the next run, each once,
and those still waiting for their payer are never sent; a waiting order is looked at again when
its look is due, not before; inserted once its payer authorised; failed once it has waited past
the deadline; a run of each issuing DAG at once sends no order twice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_desk import AirflowDesk
from dag_files import parse_frequent_dag
from factories import make_order, write_pdf
from nontax_dev.airflow_run import DAG_ID, WAITING_DAG_ID, airflow_env
from nontax_dev.payers import own_receiver, payer_answers, recorded_outcome
from wechat_nontax.issuing.auth_links import make_links
from wechat_nontax.wechat.hook import WeChatNonTaxHook
from wechat_nontax.wechat.rules import AUTHORIZATION_RECHECK_S

pytestmark = pytest.mark.e2e


class Desk(AirflowDesk):
    """The order database, the sandbox and one Airflow home for both issuing DAGs."""

    def load(self, *orders, unauthorized=False):
        for order in orders:
            write_pdf(self.pdf_root, order)
        waiting = {o.order_id for o in orders} if unauthorized else set()
        self.store.upsert_orders(orders, waiting_for_payer=waiting)

    def links(self, orders):
        """Each order's authorisation link, made as `nontax link` makes it: {order_id: url}."""
        hook = WeChatNonTaxHook()
        try:
            made = make_links(self.store, hook, [o.order_id for o in orders])
        finally:
            hook.close()
        assert [r.outcome for r in made] == ["made"] * len(orders)
        return {r.order_id: r.auth_url for r in made}

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


@pytest.fixture
def receiver(desk, tmp_path):
    """The unit's receiver of WeChat's events, a process of its own on the test's database."""
    with own_receiver(desk.dsn, tmp_path / "receiver") as running:
        yield running


def waiting(desk, order):
    """The order loaded and issued by the daily DAG while its payer has not authorised: 72038."""
    desk.load(order)
    desk.sandbox.set_authorization(order.order_id, "unauthorized")
    result = desk.run(DAG_ID, {"order_ids": [order.order_id]})
    assert result.run_state == "success", result.output[-3000:]
    row = desk.store.get_row(order.order_id)
    assert row["status"] == "awaiting_auth" and row["last_errcode"] == 72038


def test_the_waiting_dag_imports_cleanly_and_runs_alone_every_2_minutes():
    dag = parse_frequent_dag("nontax_waiting.py", WAITING_DAG_ID, "*/2 * * * *")
    assert int(AUTHORIZATION_RECHECK_S) == 15 * 60  # a look at every run once due
    assert set(dag.params) == {"max_orders", "workers"}
    assert not hasattr(dag.get_task("claim_orders"), "scope")  # all that is due
    assert dag.get_task("issue_bills").pool == "wechat_nontax"


def test_payers_who_authorise_between_runs_get_their_bills_from_the_next_run_each_once(
    desk, wechat_conn, receiver
):
    desk.sandbox.configure(authorize_by_default=False)  # WeChat's side knows only the events
    a, b, c, d = orders = [make_order(n) for n in range(4)]
    desk.load(*orders, unauthorized=True)
    links = desk.links(orders)

    def answer(order, authorized=True):
        """WeChat pushes the payer's event to the receiver; what recording it did."""
        pushed = payer_answers(links[order.order_id], receiver=receiver, authorized=authorized,
                               sandbox=desk.sandbox)  # fmt: skip
        assert pushed.delivered and pushed.push.tries == 1, pushed.push
        return recorded_outcome(desk.dsn, order.order_id)

    # Nobody has authorised: the run claims nothing and calls nothing.
    before = desk.sandbox.calls()
    idle = desk.run(WAITING_DAG_ID)
    assert idle.run_state == "success", idle.output[-3000:]
    assert idle.states("issue_bills") == {-1: "skipped"}
    assert desk.sandbox.calls() == before
    assert before["insertbill"] == before["setpdf"] == 0

    # a and b authorise, d declines; c waits.
    for order in (a, b):
        assert answer(order) == "authorized: due now"
    assert answer(d, authorized=False) == "declined"
    first = desk.run(WAITING_DAG_ID)
    assert first.run_state == "success", first.output[-3000:]
    status = {o.order_id: desk.store.get_row(o.order_id)["status"] for o in orders}
    assert status == {a.order_id: "inserted", b.order_id: "inserted",
                      c.order_id: "unauthorized", d.order_id: "declined"}  # fmt: skip

    # c authorises later: the next run inserts it, and sends a and b nothing again.
    assert answer(c) == "authorized: due now"
    second = desk.run(WAITING_DAG_ID)
    assert second.run_state == "success", second.output[-3000:]
    assert desk.store.get_row(c.order_id)["status"] == "inserted"
    assert sorted(b["order_id"] for b in desk.sandbox.bills()) == [a.order_id, b.order_id,
                                                                    c.order_id]  # fmt: skip
    for order in (a, b, c):
        assert desk.answers(order.order_id, "insertbill") == {"0": 1}
    assert desk.answers(d.order_id, "insertbill") == {} and desk.answers(d.order_id, "setpdf") == {}
    # Nothing sent for an order before its payer's event was recorded.
    sent = dict(desk.sql(
        "SELECT a.order_id, min(a.at) FROM nontax.bill_attempt a "
        "WHERE a.step = 'insert' GROUP BY a.order_id"
    ))  # fmt: skip
    answered = dict(desk.sql(
        "SELECT order_id, min(received_at) FROM nontax.authorization_event "
        "WHERE authorized GROUP BY order_id"
    ))  # fmt: skip
    assert set(sent) == {a.order_id, b.order_id, c.order_id}
    assert all(sent[o] > answered[o] for o in sent)


def test_a_run_of_each_issuing_dag_at_once_sends_no_order_twice(desk, tmp_path_factory):
    orders = [make_order(n) for n in range(60)]
    desk.load(*orders)
    desk.sandbox.add_fault(endpoint="insertbill", kind="latency", latency_ms=30)
    daily_env = airflow_env(tmp_path_factory.mktemp("airflow-daily"), base=desk.env)
    daily = Desk(desk.dsn, desk.sandbox, tmp_path_factory.mktemp("unused"), desk.pdf_root)
    daily.env = {**daily_env, "AIRFLOW__CORE__FERNET_KEY": desk.env["AIRFLOW__CORE__FERNET_KEY"]}
    with ThreadPoolExecutor(2) as pool:
        fast = pool.submit(desk.run, WAITING_DAG_ID)
        slow = pool.submit(daily.run, DAG_ID, {"batch_size": 10})
        runs = [fast.result(), slow.result()]
    daily.store.close()
    assert [r.run_state for r in runs] == ["success", "success"], [r.output[-2000:] for r in runs]
    assert {desk.store.get_row(o.order_id)["status"] for o in orders} == {"inserted"}
    stats = desk.sandbox.orders()
    assert len(stats) == 60
    assert all(s["attempts"] == 1 and s["successes"] == 1 for s in stats.values())
    shared = desk.sql(
        "SELECT order_id FROM nontax.bill_attempt WHERE step IN ('upload', 'insert') "
        "GROUP BY order_id HAVING count(DISTINCT run_id) > 1"
    )
    assert shared == []


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
