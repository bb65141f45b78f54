"""Two runs in two worker processes at once, one order database, one sandbox, and the token
expiring in the middle: no order is worked on by both, and the token is fetched once per expiry."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.e2e


def test_two_runs_at_once_with_a_token_expiry_fetch_once_per_expiry(make_rig):
    rig = make_rig(homes=2)
    orders = rig.load(160)
    ids = [o.order_id for o in orders]
    sandbox = rig.sandbox
    sandbox.add_fault(endpoint="*", kind="latency", latency_ms=20)
    # Every token expires right before the insert of an order in the middle of the second
    # run's share: both processes hold that token, one of them meets the expiry first.
    middle = ids[120]
    sandbox.add_fault(endpoint="insertbill", kind="token_expire", count=1, order_ids=[middle])

    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(lambda home: rig.run({"batch_size": 40, "max_orders": 80}, home=home), [0, 1])
        )
    assert [r.run_state for r in runs] == ["success", "success"], [r.output[-2000:] for r in runs]
    # Both runs worked, each on its share of the claim ...
    by_run = dict(
        rig.sql(
            "SELECT run_id, count(DISTINCT order_id) FROM nontax.bill_attempt "
            "WHERE step = 'insert' GROUP BY run_id"
        )
    )
    assert sorted(by_run.values()) == [80, 80], by_run
    # ... and no order was uploaded or inserted by both.
    shared = rig.sql(
        "SELECT order_id FROM nontax.bill_attempt WHERE step IN ('upload', 'insert') "
        "GROUP BY order_id HAVING count(DISTINCT run_id) > 1"
    )
    assert shared == []

    expiries = sum(f["hits"] for f in sandbox.faults() if f["kind"] == "token_expire")
    assert expiries == 1
    # One fetch before the expiry, one after it, for both processes together: in the shared
    # cache and in what the sandbox itself issued.
    assert rig.sql("SELECT sum(fetch_count) FROM nontax.access_token") == [(2,)]
    assert len(sandbox.tokens()) == 2
    # Each insert was sent once, except those refused for the expired token and retried once.
    stats = sandbox.orders()
    refused = {o for o, s in stats.items() if s["errcodes"].get("42001")}
    assert middle in refused
    assert all(s["attempts"] == 1 for o, s in stats.items() if o not in refused)
    assert all(s["attempts"] == 2 and s["successes"] == 1 for o, s in stats.items() if o in refused)
    assert rig.violations(ids, token_expiries=expiries) == []
    assert set(rig.statuses().values()) == {"inserted"}
