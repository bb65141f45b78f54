"""A batch try frozen with its insert at WeChat while its hold runs out and a reload changes the
order (real Postgres, the sandbox over HTTP): the bill WeChat issued carries the old data, so
the order keeps its code and openid but needs a person, and the batch says so."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from factories import make_order
from wechat_nontax.issuing.issue_operator import IssueBillsOperator
from wechat_nontax.issuing.outcomes import Outcome


class _ReloadWhileAtWeChat:
    """The hook, but while the insert is at WeChat the try stalls past its hold and the unit's
    system reloads the order with a new fee (the reload is allowed: nobody holds it now)."""

    def __init__(self, hook, env, changed):
        self.hook, self.env, self.changed = hook, env, changed
        self.reloads = []

    def upload_pdf(self, *args, **kwargs):
        return self.hook.upload_pdf(*args, **kwargs)

    def insert_bill(self, order, media_id):
        if order.order_id == self.changed.order_id:
            self.env.sql(
                "UPDATE nontax.bill_order SET claim_expires_at = now() - interval '1 second' "
                "WHERE order_id = %s",
                (order.order_id,),
            )
            self.reloads.append(self.env.store.upsert_orders([self.changed]))
        return self.hook.insert_bill(order, media_id)


def test_a_bill_recorded_on_a_row_version_wechat_never_saw_needs_a_person(env):
    orders = env.orders(3)
    victim = orders[1]
    changed = make_order(1, fee=99999)
    api = _ReloadWhileAtWeChat(env.hook, env, changed)

    results = env.issue(orders, api=api, max_workers=1)

    assert [r.updated for r in api.reloads] == [1]
    assert results[victim.order_id].outcome is Outcome.MISMATCHED
    assert {results[o.order_id].outcome for o in (orders[0], orders[2])} == {Outcome.INSERTED}
    # WeChat has the bill with the data it was sent; the row has the new data, the bill's code
    # and openid, and says why a person must look.
    bill = next(b for b in env.sandbox.bills() if b["order_id"] == victim.order_id)
    assert bill["fee"] == victim.fee != changed.fee
    row = env.store.get_row(victim.order_id)
    assert (row["status"], row["fee"], row["row_version"]) == ("mismatched", 99999, 2)
    assert (row["code"], row["openid"]) == (bill["code"], bill["openid"])
    assert "row version 1" in row["reason"] and "void it" in row["reason"]
    assert [r[0] for r in env.store.needs_attention()] == [victim.order_id]
    # Never sent again: not by a person's clear of the batch, nor after a reset or a reload.
    assert not env.store.reset(victim.order_id)
    env.store.upsert_orders([make_order(1, fee=88888)])
    again = env.issue([victim], include_needs_person=True)
    assert again[victim.order_id].outcome is Outcome.ALREADY_DONE
    assert [b["order_id"] for b in env.sandbox.bills()].count(victim.order_id) == 1
    assert env.store.get_row(victim.order_id)["status"] == "mismatched"

    # The batch is red for a person, naming the order and what to do.
    operator = IssueBillsOperator(task_id="issue_bills", order_ids=[o.order_id for o in orders])
    with pytest.raises(AirflowFailException, match="1 orders need a person") as failed:
        operator._judge(list(results.values()), dry_run=False)
    assert victim.order_id in str(failed.value) and "compare the bill" in str(failed.value)
