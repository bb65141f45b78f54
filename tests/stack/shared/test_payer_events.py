"""From the authorisation link to the bill with no person, on the shared stack: orders loaded
unauthorised (`nontax load`), their links asked for (`nontax link --unauthorized`), WeChat (the
sandbox's pusher) pushes the payers' events to the stack's receiver, and the scheduled runs of
`nontax_waiting` insert the authorised ones within minutes, each once; the declined order ends
`declined` and the silent one stays `unauthorized`, neither ever sent.

The shared stack schedules `nontax_waiting` every minute (NONTAX_WAITING_SCHEDULE, see
conftest.py) instead of every 2: the test unpauses it, as a deployment does once, and triggers
nothing.
"""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg2
import pytest

from factories import make_order, order_line, write_pdf
from nontax_dev.payers import CallbackReceiver, payer_answers
from nontax_dev.stack.stack import Stack
from wechat_nontax.settings import WAITING_DAG_ID

pytestmark = pytest.mark.e2e

AUTHORISING = 6
DECLINING = 7
SILENT = 8
WITHIN_S = 180  # one tick (60 s) plus a run's own time, with room for a loaded machine


def nontax(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The `nontax` command as a person types it against the stack (its Connections)."""
    return subprocess.run(
        [sys.executable, "-m", "wechat_nontax.cli.main", "--dsn", stack.orders_dsn, *args],
        env=stack.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def statuses(stack: Stack) -> dict[str, str]:
    with psycopg2.connect(stack.orders_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT order_id, status FROM nontax.bill_order")
        found = dict(cur.fetchall())
    conn.close()
    return found


def pause_when_idle(stack: Stack, timeout_s: float = 300) -> None:
    """Paused between runs: the scheduler leaves a paused DAG's running run unfinished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.api.wait_idle(timeout=timeout_s, dag_id=WAITING_DAG_ID)
        stack.api.set_paused(True, dag_id=WAITING_DAG_ID)
        runs = stack.api.runs(dag_id=WAITING_DAG_ID)
        if not [r for r in runs if r["state"] in ("queued", "running")]:
            return
        stack.api.set_paused(False, dag_id=WAITING_DAG_ID)  # a tick came between: let it end
    raise TimeoutError(f"{WAITING_DAG_ID} not idle within {timeout_s} s")


def test_payers_answering_in_wechat_get_their_bills_from_the_scheduled_runs_each_once(
    stack: Stack, tmp_path
):
    admin = stack.sandbox_admin()
    admin.configure(authorize_by_default=False)  # WeChat knows only what the payers answered
    orders = [make_order(n) for n in range(1, SILENT + 1)]
    ids = [o.order_id for o in orders]
    authorising, declined, silent = ids[:AUTHORISING], ids[DECLINING - 1], ids[SILENT - 1]
    export = tmp_path / "unauthorized.jsonl"
    export.write_text("".join(order_line(o, authorized=False) + "\n" for o in orders), "utf-8")
    for order in orders:
        write_pdf(stack.pdf_root, order)

    loaded = nontax(stack, "load", str(export))
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert set(statuses(stack).values()) == {"unauthorized"}
    linked = nontax(stack, "link", "--unauthorized")
    assert linked.returncode == 0, linked.stdout + linked.stderr
    links = {w[0]: w[1] for w in map(str.split, linked.stdout.splitlines()) if w and w[0] in ids}
    assert set(links) == set(ids), linked.stdout

    # Scheduled from now on, as a deployment leaves it; nobody triggers a run.
    stack.api.set_paused(False, dag_id=WAITING_DAG_ID)
    try:
        receiver = CallbackReceiver.of_stack(stack)
        answers = [payer_answers(links[o], receiver=receiver, sandbox=admin) for o in authorising]
        answers.append(
            payer_answers(links[declined], receiver=receiver, authorized=False, sandbox=admin)
        )
        assert all(a.delivered and a.push.tries == 1 for a in answers), [a.push for a in answers]
        pushed_at = {a.order_id: a.pushed_at for a in answers}

        deadline = time.time() + WITHIN_S + 60
        while time.time() < deadline:
            bills = {b["order_id"]: b for b in admin.bills()}
            if set(authorising) <= set(bills):
                break
            time.sleep(3)
        else:
            pytest.fail(f"bills after {WITHIN_S + 60} s: {sorted(bills)}; {statuses(stack)}")
    finally:
        pause_when_idle(stack)

    late = {o: bills[o]["inserted_at"] - pushed_at[o] for o in authorising}
    assert max(late.values()) < WITHIN_S, late
    found = statuses(stack)
    assert {o: found[o] for o in authorising} == dict.fromkeys(authorising, "inserted")
    assert (found[declined], found[silent]) == ("declined", "unauthorized")
    sent = admin.orders()
    for order_id in authorising:  # each once
        assert (sent[order_id]["attempts"], sent[order_id]["successes"]) == (1, 1), sent[order_id]
    for order_id in (declined, silent):  # never sent: no upload, no insert
        answered = admin.order_answers(order_id)
        assert "setpdf" not in answered and "insertbill" not in answered, answered
    runs = stack.api.runs(dag_id=WAITING_DAG_ID)
    assert runs and {r["run_type"] for r in runs} == {"scheduled"}, runs
    with psycopg2.connect(stack.orders_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT order_id, outcome FROM nontax.authorization_event ORDER BY event_id"
        )  # the receiver recorded each event once
        events = cur.fetchall()
    conn.close()
    assert [o for o, _ in events] == [*authorising, declined]
    assert dict(events)[declined] == "declined"
    admin.close()
