"""observability.metrics: what each one-liner puts on the StatsD wire (a real UDP socket), tags
of low cardinality, and a backend that fails or is absent costing nothing."""

from __future__ import annotations

import time

import pytest

from nontax_dev.statsd_wire import statsd_in_process
from wechat_nontax.observability import metrics
from wechat_nontax.wechat import errors


@pytest.fixture
def wire():
    with statsd_in_process() as listener:
        yield listener


def test_each_one_liner_sends_its_name_tags_and_value(wire):
    metrics.bill_inserted("inserted")
    metrics.order_ended("failed", 40078)
    metrics.order_ended("invalid", None)
    metrics.token_refreshed(forced=True)
    metrics.quota_stopped("insert")
    metrics.hold_lost("order")
    metrics.request_ended("refuse", "done")
    metrics.run_reported("nontax_insertbill", green=True)
    with metrics.wechat_call("token"):
        pass
    got = {(line.name, tuple(sorted(line.tags.items())), line.kind) for line in wire.lines()}
    assert {
        ("airflow.nontax.bills.inserted", (("status", "inserted"),), "c"),
        ("airflow.nontax.orders.ended", (("errcode", "40078"), ("status", "failed")), "c"),
        ("airflow.nontax.orders.ended", (("errcode", "none"), ("status", "invalid")), "c"),
        ("airflow.nontax.token.refreshes", (("forced", "true"),), "c"),
        ("airflow.nontax.quota.stops", (("api", "insert"),), "c"),
        ("airflow.nontax.holds.lost", (("work", "order"),), "c"),
        ("airflow.nontax.requests.ended", (("kind", "refuse"), ("outcome", "done")), "c"),
        (
            "airflow.nontax.runs.reported",
            (("dag", "nontax_insertbill"), ("verdict", "success")),
            "c",
        ),
        ("airflow.nontax.run.last_success", (("dag", "nontax_insertbill"),), "g"),
    } <= got
    last_success = next(s for s in wire.lines() if s.name.endswith("run.last_success"))
    assert abs(last_success.value - time.time()) < 60
    names = {line.name.removeprefix("airflow.") for line in wire.lines()}
    tasks = {m.name for m in metrics.EMITTED if not m.name.startswith("nontax.receiver.")}
    assert names == tasks, "a task metric of EMITTED never sent, or more"


RECEIVER = """
import sys
from wechat_nontax.observability import metrics
metrics.receiver_event("applied")
metrics.receiver_refused("signature")
metrics.receiver_spooled()
metrics.receiver_answered("applied", 0.012)
assert not [m for m in sys.modules if m.split(".")[0] == "airflow"], "the receiver imported Airflow"
"""


def test_the_receivers_metrics_reach_statsd_without_importing_airflow():
    """The receiver is a service without Airflow: its one-liners send straight to the StatsD
    server of the deployment's [metrics] settings, in the tasks' format."""
    import os
    import subprocess
    import sys

    from nontax_dev.statsd_wire import StatsdListener
    from wechat_nontax.observability.metrics import statsd_config

    listener = StatsdListener()
    try:
        env = {**os.environ, **statsd_config(f"127.0.0.1:{listener.port}")}
        done = subprocess.run(
            [sys.executable, "-c", RECEIVER], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        got = {(line.name, tuple(line.tags.items()), line.kind) for line in listener.lines()}
        assert got == {
            ("airflow.nontax.receiver.events", (("outcome", "applied"),), "c"),
            ("airflow.nontax.receiver.refused", (("reason", "signature"),), "c"),
            ("airflow.nontax.receiver.spooled", (), "c"),
            ("airflow.nontax.receiver.answer_ms", (("outcome", "applied"),), "ms"),
        }
        assert listener.total("airflow.nontax.receiver.answer_ms") == pytest.approx(12, abs=0.5)
        # StatsD off (the default): nothing sent, nothing fails.
        off = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__METRICS__")}
        done = subprocess.run(
            [sys.executable, "-c", RECEIVER], env=off, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
    finally:
        listener.close()


def test_a_wechat_call_counts_its_answer_and_times_it(wire):
    with metrics.wechat_call("insert"):
        time.sleep(0.02)
    with pytest.raises(errors.WeChatError), metrics.wechat_call("insert"):
        raise errors.error_for(72035, "refused", step="insert")
    with pytest.raises(errors.WeChatError), metrics.wechat_call("upload"):
        raise errors.error_for("timeout", "read timed out", step="upload")
    assert wire.total("airflow.nontax.wechat.calls", api="insert", errcode="0") == 1
    assert wire.total("airflow.nontax.wechat.calls", api="insert", errcode="72035") == 1
    assert wire.total("airflow.nontax.wechat.calls", api="upload", errcode="timeout") == 1
    timings = [s.value for s in wire.lines("airflow.nontax.wechat.call_ms")]
    assert len(timings) == 3 and timings[0] >= 20


def test_tags_are_of_low_cardinality_and_wire_safe():
    assert metrics.errcode_tag(0) == "0"
    assert metrics.errcode_tag(40001) == "40001"
    assert metrics.errcode_tag(987654321) == "other"  # unknown: no new series per value
    assert metrics.errcode_tag("connection_error") == "connection_error"
    assert metrics.errcode_tag(None) == "none"
    assert metrics.tag("a b,c=d|e:f") == "a_b_c_d_e_f"
    assert len(metrics.tag("x" * 500)) == 40
    for metric in metrics.EMITTED:
        assert not {"order_id", "code", "openid", "card_id", "token"} & set(metric.tags)
        assert metric.name.startswith("nontax.")


def test_a_tag_value_that_would_break_the_line_still_reaches_the_wire(wire):
    """Airflow drops a whole metric whose InfluxDB tag holds `,` `=` or a space."""
    metrics.request_ended("refuse", "bad, outcome=x")
    (line,) = wire.lines("airflow.nontax.requests.ended")
    assert line.tags == {"kind": "refuse", "outcome": "bad__outcome_x"}


class _Broken:
    def __getattr__(self, name):
        raise OSError("backend down")


def test_a_backend_that_raises_never_reaches_the_caller(monkeypatch):
    from airflow.sdk._shared.observability.metrics import stats

    monkeypatch.setattr(stats, "_backend", _Broken())
    metrics.order_ended("failed", 40078)
    with metrics.wechat_call("insert"):
        pass
    metrics.run_reported("nontax_insertbill", green=False)


def test_a_statsd_host_that_does_not_resolve_falls_back_quietly_and_quickly():
    """Airflow's client resolves the host once, when the backend is made; a name that does
    not resolve leaves the process on no backend, and no emission fails."""
    from airflow.sdk._shared.observability.metrics import stats
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
    from airflow.sdk._shared.observability.metrics.statsd_logger import get_statsd_logger
    from statsd import StatsClient

    factory = stats._factory
    stats.initialize(
        factory=lambda: get_statsd_logger(
            stats_class=StatsClient, host="statsd.nontax.invalid", port=8125, prefix="airflow"
        ),
        export_legacy_names=False,
    )
    try:
        started = time.perf_counter()
        for _ in range(1000):
            metrics.order_ended("failed", 40078)
        assert time.perf_counter() - started < 5
        assert isinstance(stats._get_backend(), NoStatsLogger)
    finally:
        stats.initialize(factory=factory, export_legacy_names=True)


def test_a_closed_port_costs_nothing():
    """UDP to a port where nothing listens: the ICMP refusals are never seen by the sender."""
    import socket

    from airflow.sdk._shared.observability.metrics import stats
    from airflow.sdk._shared.observability.metrics.statsd_logger import get_statsd_logger
    from statsd import StatsClient

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # closed: nothing listens there now
    factory = stats._factory
    stats.initialize(
        factory=lambda: get_statsd_logger(
            stats_class=StatsClient, host="127.0.0.1", port=port, prefix="airflow",
            influxdb_tags_enabled=True, statsd_influxdb_enabled=True,
        ),
        export_legacy_names=False,
    )  # fmt: skip
    try:
        started = time.perf_counter()
        for _ in range(2000):
            with metrics.wechat_call("insert"):
                pass
        assert time.perf_counter() - started < 5
    finally:
        stats.initialize(factory=factory, export_legacy_names=True)
