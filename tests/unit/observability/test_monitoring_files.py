"""The monitoring files shipped in docker/monitoring/: statsd_exporter's mapping, the Prometheus
rules and the Grafana dashboard, parsed; every metric they use is one the code emits (a task's
metric after the mapping, or a backlog gauge); and which code emits which metric.

EMITTERS below is the list the lead completes when a new emitter is wired (the authorisation
receiver's four metrics wait for `wechat_nontax.receiver` to call them)."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

from wechat_nontax.observability import backlog, metrics

MONITORING = Path(__file__).resolve().parents[3] / "docker" / "monitoring"

# Each metric of the tasks: the one-liner that sends it, and the code that calls that one-liner.
EMITTERS = {
    "nontax.bills.inserted": (
        "bill_inserted", ["wechat_nontax.store.writes.WriteBacks.record_inserted"],
    ),
    "nontax.orders.ended": ("order_ended", ["wechat_nontax.store.writes.WriteBacks.record_end"]),
    "nontax.wechat.calls": ("wechat_call", ["wechat_nontax.wechat.hook.WeChatNonTaxHook._send"]),
    "nontax.wechat.call_ms": ("wechat_call", ["wechat_nontax.wechat.hook.WeChatNonTaxHook._send"]),
    "nontax.token.refreshes": (
        "token_refreshed", ["wechat_nontax.wechat.token_cache.TokenCache._refresh_if_stale"],
    ),
    "nontax.quota.stops": (
        "quota_stopped",
        ["wechat_nontax.store.quotas.QuotaStops.record_quota_stop",
         "wechat_nontax.wechat.token_cache.TokenCache._fetch"],
    ),
    "nontax.holds.lost": (
        "hold_lost",
        ["wechat_nontax.issuing.batch_hold.BatchHold.lost",
         "wechat_nontax.requests.runner.RequestRunner._lost"],
    ),
    "nontax.requests.ended": (
        "request_ended", ["wechat_nontax.requests.runner.RequestRunner._result"],
    ),
    "nontax.runs.reported": ("run_reported", ["wechat_nontax.issuing.run_steps.finish_report"]),
    "nontax.run.last_success": ("run_reported", ["wechat_nontax.issuing.run_steps.finish_report"]),
    "nontax.receiver.events": ("receiver_event", ["wechat_nontax.receiver.app.create_app"]),
    "nontax.receiver.refused": ("receiver_refused", ["wechat_nontax.receiver.app.create_app"]),
    "nontax.receiver.spooled": ("receiver_spooled", ["wechat_nontax.receiver.app.create_app"]),
    "nontax.receiver.answer_ms": ("receiver_answered", ["wechat_nontax.receiver.app.create_app"]),
}  # fmt: skip


def _mapping() -> dict[str, dict]:
    config = yaml.safe_load((MONITORING / "statsd-mapping.yaml").read_text())
    return {m["match"]: m for m in config["mappings"]}


def _prometheus_names() -> set[str]:
    """Every series name a rule or a panel may use: the tasks' metrics as statsd_exporter names
    them (a histogram's _bucket, _sum, _count) and the backlog gauges."""
    names = set()
    for mapped in _mapping().values():
        if mapped.get("observer_type") == "histogram":
            names |= {mapped["name"] + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(mapped["name"])
    return names | {gauge.name for gauge in backlog.GAUGES}


def _used(expr: str) -> set[str]:
    """The metric names in a PromQL expression (label values in quotes left out)."""
    return set(re.findall(r"\bnontax_[a-z_]+\b", re.sub(r'"[^"]*"', "", expr)))


def test_the_mapping_names_every_emitted_metric_as_the_module_says():
    mapping = _mapping()
    assert set(mapping) == {f"airflow.{m.name}" for m in metrics.EMITTED}
    for metric in metrics.EMITTED:
        mapped = mapping[f"airflow.{metric.name}"]
        assert mapped["name"] == metric.prometheus
        expected = {"counter": "counter", "gauge": "gauge", "timer": "observer"}[metric.kind]
        assert mapped["match_metric_type"] == expected
        if metric.kind == "timer":
            assert mapped["observer_type"] == "histogram" and mapped["name"].endswith("_seconds")
        if metric.kind == "counter":
            assert mapped["name"].endswith("_total")
        assert not ({"*", "{", "}"} & set(mapped["match"])), "exact matches only"


def test_every_metric_has_its_emitter_listed_and_that_code_calls_it():
    assert set(EMITTERS) == {m.name for m in metrics.EMITTED}
    for metric in metrics.EMITTED:
        one_liner, callers = EMITTERS[metric.name]
        assert callable(getattr(metrics, one_liner)), one_liner
        if not callers:
            assert metric.emitted_by == "wechat_nontax.receiver", metric.name
            continue
        assert metric.emitted_by.replace(" ", "").split(",") == callers, metric.name
        for dotted in callers:
            obj = None
            parts = dotted.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                for attribute in parts[i:]:
                    obj = getattr(obj, attribute)
                break
            assert f"metrics.{one_liner}(" in inspect.getsource(obj), (dotted, one_liner)


def test_the_receiver_calls_its_metrics_once_it_exists():
    try:
        receiver = importlib.import_module("wechat_nontax.receiver")
    except ImportError:
        pytest.skip("wechat_nontax.receiver is not on this branch: the lead wires it")
    files = Path(receiver.__file__).parent.rglob("*.py")
    source = "\n".join(path.read_text() for path in files)
    for name in ("receiver_event", "receiver_refused", "receiver_spooled", "receiver_answered"):
        assert f"metrics.{name}(" in source, name


def test_every_rule_is_well_formed_and_uses_only_emitted_metrics():
    rules = yaml.safe_load((MONITORING / "nontax-alerts.yaml").read_text())
    known = _prometheus_names()
    alerts = {}
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"]
            used = _used(rule["expr"])
            assert used, rule["alert"]
            assert used <= known, (rule["alert"], used - known)
            alerts[rule["alert"]] = rule["expr"]
    # What the issue asks a unit to be paged for.
    assert "nontax_orders_needing_person" in alerts["NontaxOrdersNeedAPerson"]
    assert "86400" in alerts["NontaxOldestDueOrderOverADay"]
    assert "nontax_quota_stops_active" in alerts["NontaxQuotaStopActive"]
    assert "26 * 3600" in alerts["NontaxNoGreenRunIn26h"]
    assert 'outcome="error"' in alerts["NontaxReceiverErrors"]


def test_every_dashboard_panel_uses_only_emitted_metrics():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    known = _prometheus_names()
    seen = set()
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
        for target in panel["targets"]:
            used = _used(target["expr"])
            assert used and used <= known, (panel["title"], used - known)
            seen |= used
    # The dashboard shows every metric there is (a histogram through its buckets).
    shown = {re.sub(r"_bucket$", "", name) for name in seen}
    everything = {m.prometheus for m in metrics.EMITTED} | {g.name for g in backlog.GAUGES}
    assert everything <= shown, everything - shown


def test_the_scrape_configuration_points_at_the_endpoint_and_the_exporter():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    from wechat_nontax.settings import METRICS_URL_PREFIX

    assert jobs["nontax-backlog"]["metrics_path"] == f"{METRICS_URL_PREFIX}/metrics"
    assert jobs["nontax-backlog"]["authorization"]["type"] == "Bearer"
    assert "credentials" not in jobs["nontax-backlog"]["authorization"]  # a file, never inline
    assert config["rule_files"] == ["/etc/prometheus/nontax-alerts.yaml"]


def test_the_compose_overlay_turns_the_metrics_on_in_every_airflow_container():
    root = MONITORING.parents[1]
    overlay = yaml.safe_load((MONITORING / "compose.yaml").read_text())
    main = yaml.safe_load((root / "docker-compose.yaml").read_text())
    airflow = {name for name, svc in main["services"].items() if "airflow" in name}
    airflow.discard("airflow-init")  # migrates and exits: no metric of ours
    services = overlay["services"]
    expected = metrics.statsd_config("statsd-exporter:9125")
    for name in airflow:
        env = services[name]["environment"]
        assert {k: env[k] for k in expected} == expected, name
        conn = env["AIRFLOW_CONN_NONTAX_METRICS"]
        assert "${NONTAX_METRICS_TOKEN:?" in conn  # from the environment, never a value here
        assert json.loads(re.sub(r"\$\{[^}]*\}", "T", conn)) == {
            "conn_type": "generic",
            "password": "T",
        }
    exporter = services["statsd-exporter"]
    assert "--statsd.listen-udp=:9125" in exporter["command"]
    prometheus = services["prometheus"]
    for service in (exporter, prometheus):
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (root / source).is_file(), source
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    token_file = config["scrape_configs"][0]["authorization"]["credentials_file"]
    assert prometheus["secrets"][0]["target"] == token_file
    mounted = {v.split(":")[1] for v in prometheus["volumes"] if v.startswith("./")}
    assert set(config["rule_files"]) <= mounted


def test_the_statsd_settings_come_from_one_place():
    assert metrics.statsd_config("127.0.0.1:9125") == {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": "9125",
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
    }
    for bad in ("127.0.0.1", ":9125", "host:port"):
        with pytest.raises(ValueError, match="host:port"):
            metrics.statsd_config(bad)


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    """Prometheus' own checker: the expressions parse, and each alert fires on the series it is
    meant for and stays quiet otherwise (docker/monitoring/nontax-alerts.test.yaml)."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian's prometheus package; .ci/run installs it)")
    for command in (["check", "rules", "nontax-alerts.yaml"],
                    ["test", "rules", "nontax-alerts.test.yaml"]):  # fmt: skip
        done = subprocess.run(
            [promtool, *command], cwd=MONITORING, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_monitoring_doc_lists_every_metric_and_gauge():
    doc = (MONITORING.parents[1] / "docs" / "monitoring.md").read_text()
    for metric in metrics.EMITTED:
        assert f"| `{metric.prometheus}` | `{metric.name}` |" in doc, metric.name
    for gauge in backlog.GAUGES:
        assert f"| `{gauge.name}` |" in doc, gauge.name
    rules = yaml.safe_load((MONITORING / "nontax-alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert f"| `{rule['alert']}` |" in doc, rule["alert"]
