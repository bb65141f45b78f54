"""The backlog gauges: what a counter cannot tell, read from the order database when Prometheus
scrapes, in its text format.

One statement, one round trip, each part answered from a kept count or the first entry of a
partial index, so that a scrape costs the same at a million orders as at ten
(`bench/backlog_gauges.py` measures it and checks the plans):
- orders by status: the kept counts (`nontax.bill_status_count`, migrations 0008/0011);
- the oldest due order: `bill_order_due_idx` (authorized_at, status in the due set);
- the oldest waiting authorisation: `bill_order_unauthorized_idx` (created_at) for
  `unauthorized`; for `awaiting_auth` its rows by `bill_order_status_updated_idx` (status
  first): as many as wait for WeChat's 72038 answer, a few thousand at most;
- pending requests and the oldest: `bill_request_pending_idx`;
- quota stops in force: `nontax.api_quota`, a row per appid and call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from wechat_nontax.requests.contract import RequestKind
from wechat_nontax.store.sql import sql_list
from wechat_nontax.wechat.statuses import Status, Step

# Due and not waiting for the payer: the orders a run would send now (or after a quota).
_SENDABLE = frozenset({Status.AUTHORIZED, Status.UPLOADED})

BACKLOG_SQL = f"""
SELECT now(),
  (SELECT coalesce(json_object_agg(status, n), '{{}}') FROM (
      SELECT status, sum(orders) AS n FROM nontax.bill_status_count GROUP BY status) AS c),
  (SELECT min(authorized_at) FROM nontax.bill_order WHERE status IN {sql_list(_SENDABLE)}),
  (SELECT min(created_at) FROM nontax.bill_order WHERE status = '{Status.UNAUTHORIZED}'),
  (SELECT min(coalesce(auth_wait_since, authorized_at)) FROM nontax.bill_order
    WHERE status = '{Status.AWAITING_AUTH}'),
  (SELECT coalesce(json_object_agg(kind, n), '{{}}') FROM (
      SELECT kind, count(*) AS n FROM nontax.bill_request WHERE status = 'pending'
      GROUP BY kind) AS r),
  (SELECT min(requested_at) FROM nontax.bill_request WHERE status = 'pending'),
  (SELECT coalesce(json_object_agg(api, n), '{{}}') FROM (
      SELECT api, count(*) AS n FROM nontax.api_quota WHERE stopped_until > now()
      GROUP BY api) AS q)
"""


@dataclass(frozen=True, slots=True)
class Backlog:
    now: datetime
    orders: Mapping[str, int]
    oldest_due: datetime | None
    oldest_unauthorized: datetime | None
    oldest_awaiting_auth: datetime | None
    requests_pending: Mapping[str, int]
    oldest_request: datetime | None
    quota_stops: Mapping[str, int]  # appids whose quota of the call is used up


def read_backlog(conn: Any) -> Backlog:
    """The backlog as one snapshot (a single statement) of the order database."""
    with conn.cursor() as cur:
        cur.execute(BACKLOG_SQL)
        now, orders, due, unauthorized, awaiting, pending, oldest_request, quota = cur.fetchone()
    conn.rollback()  # read only: end the transaction the driver opened
    return Backlog(
        now, {s: int(n) for s, n in orders.items()}, due, unauthorized, awaiting,
        {k: int(n) for k, n in pending.items()}, oldest_request,
        {a: int(n) for a, n in quota.items()},
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Gauge:
    name: str
    meaning: str
    label: str | None = None


ORDERS = Gauge("nontax_orders", "orders by status (every known status, 0 included)", "status")
NEEDING_PERSON = Gauge(
    "nontax_orders_needing_person",
    "orders a person must act on: invalid, failed, mismatched (make attention, the Bills page)",
)
OLDEST_DUE = Gauge(
    "nontax_oldest_due_order_age_seconds",
    "how long the oldest order due to be sent (authorized or uploaded) has been authorised; "
    "0 when none is due",
)
OLDEST_WAITING_AUTH = Gauge(
    "nontax_oldest_waiting_authorisation_age_seconds",
    "the longest wait for a payer's authorisation: status unauthorized (since loaded) or "
    "awaiting_auth (since WeChat first answered 72038); 0 when none waits",
    "status",
)
REQUESTS_PENDING = Gauge(
    "nontax_requests_pending", "refusals and voids asked for and not carried out yet", "kind"
)
OLDEST_REQUEST = Gauge(
    "nontax_oldest_pending_request_age_seconds",
    "how long the oldest pending refusal or void has waited; 0 when none",
)
QUOTA_STOPS_ACTIVE = Gauge(
    "nontax_quota_stops_active",
    "appids whose daily quota of the call is used up now (until midnight Beijing time)",
    "api",
)
BACKLOG_UP = Gauge(
    "nontax_backlog_up", "1 when the order database answered this scrape, 0 when it did not"
)
READ_SECONDS = Gauge("nontax_backlog_read_seconds", "how long reading the backlog took")

GAUGES: tuple[Gauge, ...] = (
    ORDERS, NEEDING_PERSON, OLDEST_DUE, OLDEST_WAITING_AUTH, REQUESTS_PENDING, OLDEST_REQUEST,
    QUOTA_STOPS_ACTIVE, BACKLOG_UP, READ_SECONDS,
)  # fmt: skip


def samples(backlog: Backlog | None, read_s: float) -> Iterator[tuple[Gauge, dict, float]]:
    """Every gauge's samples: (gauge, labels, value). Without a backlog (the database did not
    answer) only `nontax_backlog_up 0` and the time spent."""
    yield BACKLOG_UP, {}, 0.0 if backlog is None else 1.0
    yield READ_SECONDS, {}, read_s
    if backlog is None:
        return

    def age(since: datetime | None) -> float:
        return max(0.0, (backlog.now - since).total_seconds()) if since else 0.0

    for status in Status:
        yield ORDERS, {"status": str(status)}, float(backlog.orders.get(status, 0))
    yield (
        NEEDING_PERSON, {},
        float(sum(backlog.orders.get(s, 0) for s in Status.NEEDS_ATTENTION)),
    )  # fmt: skip
    yield OLDEST_DUE, {}, age(backlog.oldest_due)
    yield (
        OLDEST_WAITING_AUTH,
        {"status": str(Status.UNAUTHORIZED)},
        age(backlog.oldest_unauthorized),
    )
    yield (
        OLDEST_WAITING_AUTH,
        {"status": str(Status.AWAITING_AUTH)},
        age(backlog.oldest_awaiting_auth),
    )
    for kind in RequestKind:
        yield REQUESTS_PENDING, {"kind": str(kind)}, float(backlog.requests_pending.get(kind, 0))
    yield OLDEST_REQUEST, {}, age(backlog.oldest_request)
    for api in sorted({*map(str, Step), *backlog.quota_stops}):
        yield QUOTA_STOPS_ACTIVE, {"api": api}, float(backlog.quota_stops.get(api, 0))


def exposition(backlog: Backlog | None, read_s: float) -> bytes:
    """The gauges in Prometheus' text format (prometheus_client's own writer)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    families: dict[str, GaugeMetricFamily] = {}
    for gauge, labels, value in samples(backlog, read_s):
        family = families.get(gauge.name)
        if family is None:
            family = families[gauge.name] = GaugeMetricFamily(
                gauge.name, gauge.meaning, labels=list(labels)
            )
        family.add_metric(list(labels.values()), value)

    class _Collector:
        def collect(self):
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)
