"""The path of the person on duty, through a real Airflow: the stack of `make up` (api-server,
scheduler with LocalExecutor, dag-processor, triggerer, Postgres metadata DB, the sandbox),
shared with the other UI modules (conftest.py: free ports, emptied for this module, always
stopped again).

One run with 60 orders in 3 batches of 20 and a permanent refusal (72015) for two orders of
batch 1 and one of batch 2: both batches' insert instances go red with their reasons in the
log. Then, as a person would after fixing the cause:
1. clear exactly batch 1's instance (`[task_id, map_index]`, only failed, nothing else): it alone
   runs again and goes green; the report stays red;
2. clear batch 2's instance the way the UI's Clear dialog does it by default ("Downstream"
   selected, "Clear only failed tasks" not): it runs again, then `announce_bills` and `report`,
   and the run goes green;
3. a headless Chromium logs in and screenshots the grid (artifacts/grid-after-rerun.png).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg2.extensions
import pytest
import requests

from factories import make_order, write_pdf
from nontax_dev.airflow_api import DAG_ID
from nontax_dev.airflow_run import AIRFLOW, ROOT
from nontax_dev.stack.processes import command_of
from nontax_dev.stack.stack import Stack
from stack_helpers import logged_in_page, run_in
from wechat_nontax.settings import RECEIVER_PATH
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore
from wechat_sandbox.client import DEFAULT_SECRET, SandboxAdmin
from wechat_sandbox.pusher import EventPusher

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "artifacts"

INSERT = "issue_bills"
ORDERS = 60
BATCH = 20
REFUSED = {1: ["T00000025", "T00000031"], 2: ["T00000047"]}  # map index -> orders refused


def test_the_compose_files_health_checks_pass_against_the_stack(stack: Stack):
    """The health checks of docker-compose.yaml, run here (see tests/stack/test_compose.py)."""
    from airflow.utils.net import get_hostname

    assert requests.get(f"{stack.url}/api/v2/version", timeout=10).ok
    health = f"http://127.0.0.1:{stack.config.scheduler_health_port}/health"
    assert requests.get(health, timeout=10).ok
    assert requests.get(f"{stack.sandbox_url}/_sandbox/health", timeout=10).ok
    assert stack.state is not None and stack.state.receiver_url
    receiver_health = stack.state.receiver_url.replace(RECEIVER_PATH, "/healthz")
    assert requests.get(receiver_health, timeout=10).json()["database"] is True
    # Both checks at once: each is an Airflow CLI start of seconds, one core each.
    checks = [
        [AIRFLOW, "jobs", "check", "--job-type", job, "--hostname", get_hostname()]
        for job in ("TriggererJob", "DagProcessorJob")
    ]
    with ThreadPoolExecutor(len(checks)) as pool:
        list(pool.map(lambda command: run_in(stack, command), checks))


def test_the_stacks_receiver_records_an_event_the_sandbox_pushes_with_env_sh(stack: Stack):
    """`make up`'s receiver, reached as env.sh tells the harness: its callback URL and secrets."""
    exported = dict(
        line.removeprefix("export ").split("=", 1)
        for line in (stack.config.state_dir / "env.sh").read_text().splitlines()
        if line.startswith("export ")
    )
    spec = json.loads(exported["AIRFLOW_CONN_WECHAT_NONTAX_CALLBACK"].strip("'"))
    pusher = EventPusher(
        exported["NONTAX_STACK_RECEIVER_URL"].strip("'"), token=spec["password"],
        appid=spec["login"], encoding_aes_key=spec["extra"]["encoding_aes_key"],
    )  # fmt: skip
    assert pusher.authorize("stack-event-1").delivered
    pusher.close()
    conn = psycopg2.connect(stack.orders_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT order_id FROM nontax.authorization_event")
        assert cur.fetchall() == [("stack-event-1",)]
    conn.close()


def _forkserver_maps(stack: Stack) -> str:
    scheduler = next(p for p in stack.processes() if "scheduler" in command_of(p))
    forkservers = [
        child for child in scheduler.children(recursive=True)
        if "multiprocessing.forkserver" in command_of(child)
    ]  # fmt: skip
    assert forkservers, "the scheduler runs no forkserver: LOCAL_EXECUTOR_PRELOAD not applied"
    return Path(f"/proc/{forkservers[0].pid}/maps").read_text(encoding="utf-8")


@dataclass
class Scenario:
    """The run of this module and what the tests learn about it, in order."""

    stack: Stack
    sandbox: SandboxAdmin
    store: OrderStore
    run_id: str = ""
    first_run: dict = field(default_factory=dict)
    tries_before_clears: dict = field(default_factory=dict)
    steps_done: set[str] = field(default_factory=set)

    def tis(self) -> dict[tuple[str, int], dict]:
        return {
            (t["task_id"], t["map_index"]): t for t in self.stack.api.task_instances(self.run_id)
        }

    def need(self, step: str) -> None:
        if step not in self.steps_done:
            pytest.skip(f"needs the step before it: {step}")


@pytest.fixture(scope="module")
def scenario(stack: Stack) -> Iterator[Scenario]:
    sandbox = stack.sandbox_admin()
    store = OrderStore(connect_dsn(stack.orders_dsn))
    scenario = Scenario(stack, sandbox, store)
    try:
        stack.api.wait_idle(timeout=120)
        orders = [make_order(i) for i in range(ORDERS)]
        for order in orders:
            write_pdf(stack.pdf_root, order)
        store.upsert_orders(orders)
        for order_ids in REFUSED.values():
            sandbox.add_fault(
                endpoint="insertbill", kind="errcode", errcode=72015, order_ids=order_ids
            )
        started = time.monotonic()
        scenario.run_id = stack.api.trigger({"batch_size": BATCH})
        scenario.first_run = stack.api.wait_run(scenario.run_id, timeout=300)
        print(f"first run: {scenario.first_run['state']} in {time.monotonic() - started:.1f}s")
        yield scenario
    finally:
        store.close()
        sandbox.close()


def _callback_secrets(stack: Stack) -> list[str]:
    spec = json.loads(stack.callback_connection())
    return [spec["password"], spec["extra"]["encoding_aes_key"]]


def _secrets(scenario: Scenario) -> list[str]:
    """Everything that must never reach a task log."""
    stack = scenario.stack
    assert stack.secrets is not None and stack.orders_dsn is not None
    values = [
        DEFAULT_SECRET,
        stack.secrets.admin_password,
        stack.secrets.jwt_secret,
        stack.secrets.api_secret_key,
        stack.secrets.fernet_key,
        stack.sandbox_admin_token,
        *scenario.sandbox.issued_tokens(),
        *_callback_secrets(stack),
    ]
    password = psycopg2.extensions.parse_dsn(stack.orders_dsn).get("password")
    if password:
        values.append(password)
    return values


def test_the_stack_runs_each_process_in_its_own_session_with_the_pool_and_dag(stack: Stack):
    assert stack.api.version()["version"].startswith("3.")
    health = stack.api.health()
    assert {health[c]["status"] for c in ("scheduler", "triggerer", "dag_processor")} == {"healthy"}
    assert stack.api.dag()["is_paused"] is False
    assert stack.api.pool("wechat_nontax")["slots"] == 4
    assert stack.state is not None
    names = [p.name for p in stack.state.procs]
    assert names == [
        "sandbox", "receiver", "api-server", "scheduler", "dag-processor", "triggerer",
        "log-server",
    ]  # fmt: skip
    for proc in stack.state.procs:
        assert os.getsid(proc.pid) == proc.pid, f"{proc.name} is not a session leader"
    # 35-60 s on the development machine (2 cores), while other tests ran.
    assert stack.started_in_s is not None and stack.started_in_s < 180


def test_every_server_of_the_stack_listens_on_loopback_only(stack: Stack):
    """The sockets the stack's processes (and their children) really listen on: the API, the
    sandbox, the health check and the log server, none on another interface."""
    import psutil

    listening = []
    for proc in stack.processes():
        with contextlib.suppress(psutil.NoSuchProcess):  # a task process may just have ended
            listening += [
                (proc.name(), conn.laddr)
                for conn in proc.net_connections(kind="inet")
                if conn.status == psutil.CONN_LISTEN
            ]
    ports = {addr.port for _, addr in listening}
    assert {stack.config.port, stack.config.worker_log_port} <= ports, listening
    # Each of them on the port its StackConfig field (and `make up`'s variable) names.
    assert set(stack.config.listening_ports().values()) <= ports, listening
    assert all(addr.ip in ("127.0.0.1", "::1") for _, addr in listening), listening
    served = requests.get(f"http://127.0.0.1:{stack.config.worker_log_port}/log/x", timeout=10)
    assert served.status_code == 403  # the log server, refusing a request without its JWT


def test_a_refused_batch_is_red_with_its_orders_in_the_label_and_reasons_in_the_log(
    scenario: Scenario,
):
    api = scenario.stack.api
    assert scenario.first_run["state"] == "failed"
    tis = scenario.tis()
    assert {m: tis[(INSERT, m)]["state"] for m in range(3)} == {
        0: "success",
        1: "failed",
        2: "failed",
    }
    assert tis[("report", -1)]["state"] == "failed"
    assert tis[("announce_bills", -1)]["state"] == "success"
    failed = tis[(INSERT, 1)]
    assert failed["rendered_map_index"] == "T00000020 … T00000039 (20)"
    assert failed["try_number"] == 1  # a permanent refusal fails without Airflow's retries

    log = api.log_text(scenario.run_id, INSERT, 1, map_index=1)
    for order_id in REFUSED[1]:
        line = next((x for x in log.splitlines() if re.search(rf"\b{order_id}\b.*72015", x)), None)
        assert line is not None, f"no reason for {order_id} in the log:\n{log[-3000:]}"
        assert "no permission" in line
    assert "2 orders need a person" in log
    assert "T00000047" not in log  # batch 2's order is in batch 2's log
    for secret in _secrets(scenario):
        assert secret not in log
    rows = {o: scenario.store.get_row(o) for o in REFUSED[1] + REFUSED[2]}
    assert {r["status"] for r in rows.values()} == {"failed"}
    scenario.steps_done.add("first run")


def test_no_secret_in_any_task_log_xcom_or_rendered_field_of_the_run(scenario: Scenario):
    """After a real scheduler run (not `dags test`, whose console shows secrets): every task
    instance's log, XCom values and rendered template fields, read through the REST API."""
    scenario.need("first run")
    api = scenario.stack.api
    base = f"/api/v2/dags/nontax_insertbill/dagRuns/{scenario.run_id}/taskInstances"
    seen = []
    for ti in api.task_instances(scenario.run_id):
        task_id, map_index = ti["task_id"], ti["map_index"]
        path = f"{base}/{task_id}" + (f"/{map_index}" if map_index >= 0 else "")
        seen.append(json.dumps(api.get(path).get("rendered_fields"), ensure_ascii=False))
        for attempt in range(1, ti["try_number"] + 1):
            seen.append(api.log_text(scenario.run_id, task_id, attempt, map_index=map_index))
        entries = api.get(f"{base}/{task_id}/xcomEntries", params={"map_index": map_index})
        for entry in entries["xcom_entries"]:
            value = api.get(
                f"{base}/{task_id}/xcomEntries/{entry['key']}",
                params={"map_index": map_index, "deserialize": "true"},
            )
            seen.append(json.dumps(value, ensure_ascii=False, default=str))
    text = "\n".join(seen)
    assert ("order_ids" in text and "claim_orders" in text) or "T00000000" in text  # read something
    occurrences = {secret[:6]: text.count(secret) for secret in _secrets(scenario)}
    assert sum(occurrences.values()) == 0, occurrences


def test_clearing_exactly_the_failed_instance_reruns_it_alone(scenario: Scenario):
    scenario.need("first run")
    api, sandbox = scenario.stack.api, scenario.sandbox
    sandbox.clear_faults()  # the person fixed the cause
    before = {key: ti["try_number"] for key, ti in scenario.tis().items()}
    scenario.tries_before_clears = before
    calls_before = sandbox.calls()["insertbill"]

    cleared = api.clear(scenario.run_id, [(INSERT, 1)], only_failed=True)
    assert [(t["task_id"], t["map_index"]) for t in cleared] == [(INSERT, 1)]
    run = api.wait_run(scenario.run_id, timeout=240)

    tis = scenario.tis()
    assert tis[(INSERT, 1)]["state"] == "success"
    assert tis[(INSERT, 1)]["try_number"] == before[(INSERT, 1)] + 1
    unchanged = {k: t["try_number"] for k, t in tis.items() if k != (INSERT, 1)}
    assert unchanged == {k: n for k, n in before.items() if k != (INSERT, 1)}
    # Only the batch's two refused orders were sent again; the 18 inserted ones were not.
    assert sandbox.calls()["insertbill"] - calls_before == len(REFUSED[1])
    # The report was not part of the clear: it stays red, and so does the run (batch 2 too).
    assert tis[("report", -1)]["state"] == "failed"
    assert tis[(INSERT, 2)]["state"] == "failed"
    assert run["state"] == "failed"
    ids = [b["order_id"] for b in sandbox.bills()]
    assert len(ids) == len(set(ids)), "a bill was inserted twice"
    assert {f"T{n:08d}" for n in range(40)} <= set(ids)  # batches 0 and 1: every bill
    scenario.steps_done.add("exact clear")


def test_the_ui_clear_with_downstream_reruns_the_batch_then_the_report(scenario: Scenario):
    scenario.need("exact clear")
    api, sandbox = scenario.stack.api, scenario.sandbox
    before = {key: ti["try_number"] for key, ti in scenario.tis().items()}

    # "Clear only failed tasks" ticked as well would leave announce_bills out, and the report
    # could run before the batch is done: keep it unticked (the dialog's default).
    only_failed = api.clear(
        scenario.run_id, [(INSERT, 2)], dry_run=True, only_failed=True, include_downstream=True
    )
    assert {(t["task_id"], t["map_index"]) for t in only_failed} == {(INSERT, 2), ("report", -1)}

    # Exactly what the UI's Clear dialog sends for a mapped instance, its default options:
    # "Downstream" selected, "Past", "Future", "Upstream", "Clear only failed tasks" not.
    body = {
        "dag_run_id": scenario.run_id,
        "dry_run": False,
        "task_ids": [[INSERT, 2]],
        "include_downstream": True,
        "include_upstream": False,
        "include_future": False,
        "include_past": False,
        "only_failed": False,
    }
    for dry_run in (True, False):  # the dialog lists the affected tasks first
        answer = api.post(f"/api/v2/dags/{DAG_ID}/clearTaskInstances", {**body, "dry_run": dry_run})
        cleared = {(t["task_id"], t["map_index"]) for t in answer["task_instances"]}
        assert cleared == {(INSERT, 2), ("announce_bills", -1), ("report", -1)}
    run = api.wait_run(scenario.run_id, timeout=240)

    tis = scenario.tis()
    assert run["state"] == "success"
    for key in cleared:
        assert tis[key]["state"] == "success", key
        assert tis[key]["try_number"] == before[key] + 1, key
    others = {k: t["try_number"] for k, t in tis.items() if k not in cleared}
    assert others == {k: n for k, n in before.items() if k not in cleared}

    # Every order's bill is in the sandbox exactly once, and the order rows agree.
    bills = sandbox.bills()
    ids = [b["order_id"] for b in bills]
    assert sorted(ids) == [f"T{n:08d}" for n in range(ORDERS)]
    assert {o: s["successes"] for o, s in sandbox.orders().items()} == dict.fromkeys(ids, 1)
    assert scenario.store.count_by_status() == {"inserted": ORDERS}
    scenario.steps_done.add("ui clear")


def test_a_browser_logs_in_and_sees_the_rerun_batches_green(scenario: Scenario):
    scenario.need("ui clear")
    stack = scenario.stack
    ARTIFACTS.mkdir(exist_ok=True)
    run_page = f"/dags/{DAG_ID}/runs/{quote(scenario.run_id, safe='')}"
    with logged_in_page(stack, run_page) as page:
        page.wait_for_url(f"**/dags/{DAG_ID}/runs/**")

        # The run: the grid and its task instances, batches labelled.
        page.get_by_text("announce_bills").first.wait_for()
        page.get_by_text(INSERT).first.wait_for()
        page.get_by_text("T00000040 … T00000059 (20)").first.wait_for()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ARTIFACTS / "grid-after-rerun.png"))
        text = page.inner_text("body")
        for task in ("claim_orders", "refresh_token", INSERT, "announce_bills", "report"):
            assert task in text
        assert "7 Task Instances" in text
        assert "Failed" not in text

        # The batches of issue_bills, each with its label, state and try number.
        page.goto(f"{stack.url}{run_page}/tasks/{INSERT}/mapped")
        page.get_by_text("T00000020 … T00000039 (20)").first.wait_for()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ARTIFACTS / "batches-after-rerun.png"))
        text = page.inner_text("body")
        assert "3 Task Instances" in text and "Failed" not in text
        for n in range(0, ORDERS, BATCH):
            assert f"T{n:08d} … T{n + BATCH - 1:08d} ({BATCH})" in text

        # The Clear dialog of one batch, untouched: "Downstream" is selected and "Clear
        # only failed tasks" is not, so it lists the batch, announce_bills and report.
        page.goto(f"{stack.url}{run_page}/tasks/{INSERT}/mapped/2")
        page.get_by_role("button", name="Press shift+c to clear").first.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Affected Tasks: 3").wait_for()
        dialog.get_by_text("report").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "clear-dialog-defaults.png"))
        listed = dialog.inner_text()
        for text in ("Downstream", "Clear only failed tasks", INSERT, "announce_bills"):
            assert text in listed
        dialog.get_by_role("button", name="Close").click()  # nothing is cleared
    assert scenario.stack.api.run(scenario.run_id)["state"] == "success"


def test_the_task_processes_fork_from_a_parent_that_preloaded_the_package(scenario: Scenario):
    """The LocalExecutor's workers (and so every task process) fork from the scheduler's
    forkserver, which imported wechat_nontax.preload: its memory holds aiohttp's compiled
    parser, which only the HTTP provider under the hook pulls in. A forkserver that cannot
    import the preload (the package not installed) skips it without a word."""
    scenario.need("first run")
    assert "aiohttp/_http_parser" in _forkserver_maps(scenario.stack)
