"""Every metric the pipeline emits from its tasks (and from the authorisation receiver), its
tags and meaning, and the one-line functions the call sites use.

Emitted through Airflow's own metrics interface (`airflow.sdk.observability.stats`), so they
follow the deployment's `[metrics]` settings like Airflow's own: StatsD (`statsd_on`, tags as
InfluxDB tags with `statsd_influxdb_enabled`), Datadog, or OpenTelemetry (`otel_on`); with
none of them on, nothing is sent. Names go under Airflow's `statsd_prefix` (`airflow.` by
default); `docker/monitoring/statsd-mapping.yaml` turns each into its Prometheus name.

A metric never costs a batch anything: every emission is fire-and-forget (StatsD is UDP) and
swallows whatever the backend raises. Tags are of low cardinality by construction: an api, a
status, an errcode of the policy table (any other is `other`), never an order id, a code, an
openid or a token; a tag value is cut to the characters a StatsD name may hold.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Metric:
    name: str  # the stat name, under Airflow's statsd_prefix
    kind: str  # counter, timer (milliseconds) or gauge
    tags: tuple[str, ...]
    meaning: str
    # The code that emits it (dotted paths, comma-separated): where to look; the rules test
    # checks each calls this module.
    emitted_by: str
    prometheus: str  # its name after docker/monitoring/statsd-mapping.yaml


BILLS_INSERTED = Metric(
    "nontax.bills.inserted", "counter", ("status",),
    "bills put into a payer's card package and recorded (status inserted, or mismatched when "
    "the row changed while it was sent)",
    "wechat_nontax.store.writes.WriteBacks.record_inserted", "nontax_bills_inserted_total",
)  # fmt: skip
ORDERS_ENDED = Metric(
    "nontax.orders.ended", "counter", ("status", "errcode"),
    "orders whose step ended other than inserted, by the status written (invalid, failed, "
    "rejected, duplicate, awaiting_auth, ...) and WeChat's errcode (none: no call was made)",
    "wechat_nontax.store.writes.WriteBacks.record_end", "nontax_orders_ended_total",
)  # fmt: skip
WECHAT_CALLS = Metric(
    "nontax.wechat.calls", "counter", ("api", "errcode"),
    "calls to WeChat by api (token, upload, insert, authorization, refuse, void, status) and "
    "answer (errcode 0: success; a transport failure by its signal: timeout, http_5xx...)",
    "wechat_nontax.wechat.hook.WeChatNonTaxHook._send", "nontax_wechat_calls_total",
)  # fmt: skip
WECHAT_CALL_MS = Metric(
    "nontax.wechat.call_ms", "timer", ("api",),
    "how long each call to WeChat took, answer or failure (milliseconds on the wire, seconds "
    "in Prometheus)",
    "wechat_nontax.wechat.hook.WeChatNonTaxHook._send", "nontax_wechat_call_seconds",
)  # fmt: skip
TOKEN_REFRESHES = Metric(
    "nontax.token.refreshes", "counter", ("forced",),
    "access tokens fetched into the shared cache; forced=true: a forced refresh of "
    "stable_token (20 a day for the account)",
    "wechat_nontax.wechat.token_cache.TokenCache._refresh_if_stale",
    "nontax_token_refreshes_total",
)  # fmt: skip
QUOTA_STOPS = Metric(
    "nontax.quota.stops", "counter", ("api",),
    "daily quota answers recorded (45009, 72057): the api stops for every run until midnight "
    "Beijing time",
    "wechat_nontax.store.quotas.QuotaStops.record_quota_stop, "
    "wechat_nontax.wechat.token_cache.TokenCache._fetch",
    "nontax_quota_stops_total",
)  # fmt: skip
HOLDS_LOST = Metric(
    "nontax.holds.lost", "counter", ("work",),
    "orders (work=order) or requests (work=request) a task try held and then lost: its result "
    "not recorded by it (another holder, or the hold ran out)",
    "wechat_nontax.issuing.batch_hold.BatchHold.lost, "
    "wechat_nontax.requests.runner.RequestRunner._lost", "nontax_holds_lost_total",
)  # fmt: skip
REQUESTS_ENDED = Metric(
    "nontax.requests.ended", "counter", ("kind", "outcome"),
    "refusals and voids a requests run took up, by kind (refuse, void) and outcome (done, "
    "refused, failed, waiting, not_held)",
    "wechat_nontax.requests.runner.RequestRunner._result", "nontax_requests_ended_total",
)  # fmt: skip
RUNS_REPORTED = Metric(
    "nontax.runs.reported", "counter", ("dag", "verdict"),
    "issuing runs whose report task ran, by verdict (success; problems: something needs a "
    "person or was left over, the run is red)",
    "wechat_nontax.issuing.run_steps.finish_report", "nontax_runs_reported_total",
)  # fmt: skip
RUN_LAST_SUCCESS = Metric(
    "nontax.run.last_success", "gauge", ("dag",),
    "Unix time of the issuing DAG's last green report",
    "wechat_nontax.issuing.run_steps.finish_report", "nontax_run_last_success_timestamp_seconds",
)  # fmt: skip

# The authorisation event receiver (wechat_nontax/receiver/app.py): its metrics reach StatsD
# without Airflow (`_emit_from_service` below).
RECEIVER_EVENTS = Metric(
    "nontax.receiver.events", "counter", ("outcome",),
    "requests the receiver answered on its callback, by outcome (recorded, spooled, ignored, "
    "refused, error: neither recorded nor spooled, answered 500 so that WeChat tries again)",
    "wechat_nontax.receiver.app.create_app", "nontax_receiver_events_total",
)  # fmt: skip
RECEIVER_REFUSED = Metric(
    "nontax.receiver.refused", "counter", ("reason",),
    "events refused by reason (signature, decrypt, malformed, unknown_appid, ...)",
    "wechat_nontax.receiver.app.create_app", "nontax_receiver_refused_total",
)  # fmt: skip
RECEIVER_SPOOLED = Metric(
    "nontax.receiver.spooled", "counter", (),
    "events kept in the receiver's spool because the order database did not answer",
    "wechat_nontax.receiver.app.create_app", "nontax_receiver_spooled_total",
)  # fmt: skip
RECEIVER_ANSWER_MS = Metric(
    "nontax.receiver.answer_ms", "timer", ("outcome",),
    "how long the receiver took to answer WeChat (WeChat gives up after 5 s)",
    "wechat_nontax.receiver.app.create_app", "nontax_receiver_answer_seconds",
)  # fmt: skip

EMITTED: tuple[Metric, ...] = (
    BILLS_INSERTED, ORDERS_ENDED, WECHAT_CALLS, WECHAT_CALL_MS, TOKEN_REFRESHES, QUOTA_STOPS,
    HOLDS_LOST, REQUESTS_ENDED, RUNS_REPORTED, RUN_LAST_SUCCESS,
    RECEIVER_EVENTS, RECEIVER_REFUSED, RECEIVER_SPOOLED, RECEIVER_ANSWER_MS,
)  # fmt: skip

# What a StatsD name (and so a tag, with InfluxDB tags) may hold; anything else is dropped
# by Airflow's validator together with the whole metric.
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_.-]")
_TAG_MAX = 40


def tag(value: Any) -> str:
    """A tag value as the wire can carry it: characters outside a StatsD name's set become
    `_`, at most 40 of them; empty or None is `none`."""
    if value is None or value == "":
        return "none"
    return _NOT_ALLOWED.sub("_", str(value))[:_TAG_MAX]


def errcode_tag(signal: int | str | None) -> str:
    """An errcode or transport signal the policy table knows, 0, `none` (no call), or
    `other`: an unknown errcode must not grow a new series per value."""
    from wechat_nontax.wechat.rules import POLICY, STEP_POLICY

    if signal is None:
        return "none"
    if signal == 0 or signal in POLICY or any(signal in rules for rules in STEP_POLICY.values()):
        return tag(signal)
    return "other"


def _emit(kind: str, metric: Metric, value: float, tags: dict[str, str]) -> None:
    """Hand one value to Airflow's stats backend; never raises."""
    try:
        from airflow.sdk.observability import stats

        if kind == "counter":
            stats.incr(metric.name, count=int(value), tags=tags)
        elif kind == "timer":
            stats.timing(metric.name, value, tags=tags)
        else:
            stats.gauge(metric.name, value, tags=tags)
    except Exception as exc:  # noqa: BLE001 (a metric never fails the work it measures)
        log.debug("metric %s not sent: %s", metric.name, type(exc).__name__)


def statsd_config(address: str) -> dict[str, str]:
    """The Airflow settings (as environment variables) that send these metrics, tags
    included, to the StatsD server at `address` ("host:port"): what `make up STATSD=...` and
    the compose file's `statsd` profile set."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"StatsD address {address!r}: host:port")
    return {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": host,
        "AIRFLOW__METRICS__STATSD_PORT": port,
        # Without it Airflow's StatsD client drops every tag (api, errcode, status...).
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
    }


# -- the call sites' one-liners -------------------------------------------------------------------


def bill_inserted(status: str) -> None:
    _emit("counter", BILLS_INSERTED, 1, {"status": tag(status)})


def order_ended(status: str, errcode: int | str | None) -> None:
    _emit("counter", ORDERS_ENDED, 1, {"status": tag(status), "errcode": errcode_tag(errcode)})


@contextlib.contextmanager
def wechat_call(api: str) -> Iterator[None]:
    """Count and time one call to WeChat: errcode 0 when the block returns, the error's
    errcode or signal when it raises one (re-raised untouched)."""
    started = time.perf_counter()
    signal: int | str | None = 0
    try:
        yield
    except BaseException as exc:
        signal = getattr(exc, "signal", "error")
        raise
    finally:
        ms = (time.perf_counter() - started) * 1000
        _emit("counter", WECHAT_CALLS, 1, {"api": tag(api), "errcode": errcode_tag(signal)})
        _emit("timer", WECHAT_CALL_MS, ms, {"api": tag(api)})


def token_refreshed(*, forced: bool) -> None:
    _emit("counter", TOKEN_REFRESHES, 1, {"forced": "true" if forced else "false"})


def quota_stopped(api: str) -> None:
    _emit("counter", QUOTA_STOPS, 1, {"api": tag(api)})


def hold_lost(work: str) -> None:
    _emit("counter", HOLDS_LOST, 1, {"work": tag(work)})


def request_ended(kind: str, outcome: str) -> None:
    _emit("counter", REQUESTS_ENDED, 1, {"kind": tag(kind), "outcome": tag(outcome)})


def run_reported(dag_id: str, *, green: bool) -> None:
    _emit("counter", RUNS_REPORTED, 1, {"dag": tag(dag_id), "verdict": _verdict(green)})
    if green:
        _emit("gauge", RUN_LAST_SUCCESS, time.time(), {"dag": tag(dag_id)})


def _verdict(green: bool) -> str:
    return "success" if green else "problems"


# The receiver never imports Airflow (a service of its own, quick to start): its metrics go
# straight to the deployment's StatsD server in Airflow's format (the prefix, InfluxDB tags), so
# the mapping, the rules and the dashboard take them like the tasks'.


@functools.cache
def _service_statsd() -> Any:
    from wechat_nontax.settings import statsd_for_services

    where = statsd_for_services()
    if where is None:
        return None
    try:
        from statsd import StatsClient

        return StatsClient(where[0], where[1], prefix=where[2])
    except Exception as exc:  # noqa: BLE001 (a name that does not resolve: no metrics, no harm)
        log.warning("no StatsD for the receiver's metrics: %s", type(exc).__name__)
        return None


def _emit_from_service(kind: str, metric: Metric, value: float, tags: dict[str, str]) -> None:
    try:
        client = _service_statsd()
        if client is None:
            return
        name = metric.name + "".join(f",{k}={v}" for k, v in tags.items())
        if kind == "counter":
            client.incr(name, int(value))
        else:
            client.timing(name, value)
    except Exception as exc:  # noqa: BLE001 (a metric never fails the answer it measures)
        log.debug("metric %s not sent: %s", metric.name, type(exc).__name__)


def receiver_event(outcome: str) -> None:
    _emit_from_service("counter", RECEIVER_EVENTS, 1, {"outcome": tag(outcome)})


def receiver_refused(reason: str) -> None:
    _emit_from_service("counter", RECEIVER_REFUSED, 1, {"reason": tag(reason)})


def receiver_spooled() -> None:
    _emit_from_service("counter", RECEIVER_SPOOLED, 1, {})


def receiver_answered(outcome: str, seconds: float) -> None:
    _emit_from_service("timer", RECEIVER_ANSWER_MS, seconds * 1000, {"outcome": tag(outcome)})
