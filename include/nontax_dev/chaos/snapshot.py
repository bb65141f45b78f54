"""What the order database and the sandbox say about a run's orders right now: the snapshot
the promise is checked on (nontax_dev.chaos.checks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from nontax_dev.chaos.checks import Snapshot


def take_snapshot(
    db: Any,
    admin: Any,
    order_ids: Sequence[str],
    *,
    token_expiries: int,
    final: bool,
    bad_orders: Iterable[str] = (),
    secret_hits: int = 0,
) -> Snapshot:
    """What the order database (`db`, a psycopg2 connection) and the sandbox (`admin`, a
    `SandboxAdmin`) say about `order_ids` right now."""
    ids = list(order_ids)
    rows = {}
    with db.cursor() as cur:
        cur.execute(
            """
            SELECT o.order_id, o.status, o.reason, o.code, o.openid,
                   coalesce(o.not_before > now(), false) OR EXISTS (
                       SELECT 1 FROM nontax.bill_request r WHERE r.order_id = o.order_id
                          AND r.status = 'pending' AND r.not_before > now()),
                   coalesce(o.claimed_by IS NOT NULL AND o.claim_expires_at > now(), false),
                   coalesce(o.not_before > now() AND o.last_errcode IN (45009, 72057), false),
                   CASE WHEN o.not_before > now() AND o.last_errcode IN (45009, 72057)
                        THEN substring(o.last_errmsg from 'daily quota of ([a-z]+) used up') END,
                   (SELECT count(*) FROM nontax.bill_attempt a
                     WHERE a.order_id = o.order_id AND a.outcome = 'inserted')
              FROM nontax.bill_order o WHERE o.order_id = ANY(%s)
            """,
            (ids,),
        )
        for (
            oid,
            status,
            reason,
            code,
            openid,
            waiting,
            held,
            quota,
            quota_api,
            records,
        ) in cur.fetchall():
            rows[oid] = {"status": status, "reason": reason, "code": code, "openid": openid,
                         "waiting": waiting, "held": held, "quota": quota,
                         "quota_api": quota_api, "inserted_records": records}  # fmt: skip
        cur.execute("SELECT coalesce(sum(fetch_count), 0) FROM nontax.access_token")
        fetches = int(cur.fetchone()[0])
        cur.execute(
            "SELECT order_id, kind, status FROM nontax.bill_request WHERE order_id = ANY(%s) "
            "ORDER BY request_id",
            (ids,),
        )
        requests: dict[str, list[tuple[str, str]]] = {}
        for oid, kind, state in cur.fetchall():
            requests.setdefault(oid, []).append((kind, state))
        cur.execute("SELECT api, extract(epoch FROM stopped_since)::float8 FROM nontax.api_quota")
        quota_stops = [(api, since) for api, since in cur.fetchall()]
        cur.execute(
            "SELECT order_id, extract(epoch FROM min(requested_at))::float8 "
            "FROM nontax.bill_request WHERE order_id = ANY(%s) AND kind = 'refuse' "
            "AND status <> 'withdrawn' GROUP BY order_id",
            (ids,),
        )
        refusals_asked = dict(cur.fetchall())
    db.commit()
    return Snapshot(
        order_ids=ids,
        rows=rows,
        bills=admin.bills(),
        sandbox_orders=admin.orders(),
        uploaded_names={m.get("filename") or "" for m in admin.media()},
        tokens_issued=len(admin.tokens()),
        token_fetches=fetches,
        token_expiries=token_expiries,
        bad_orders=set(bad_orders),
        secret_hits=secret_hits,
        final=final,
        requests=requests,
        rejections={oid: r.get("repeats", 0) for oid, r in admin.rejections().items()},
        reimburse={
            oid: (
                r["reimburse_status"],
                sum(1 for h in r["history"] if h["to"] == "INVOICE_REIMBURSE_CANCEL"),
            )
            for oid, r in admin.statuses().items()
        },
        call_log=admin.call_log(),
        quota_stops=quota_stops,
        refusals_asked=refusals_asked,
    )
