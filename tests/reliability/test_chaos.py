"""The chaos runner, short: 20 runs of the DAG under random faults (`make chaos` runs 200)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from nontax_dev.airflow_run import ROOT
from nontax_dev.pg import LOCAL_SERVER

pytestmark = pytest.mark.e2e

RUNS = 20


def test_twenty_chaos_runs_keep_every_promise(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("include", "dags")),
        "NONTAX_TEST_PG": os.environ.get("NONTAX_TEST_PG", LOCAL_SERVER),
    }
    command = [sys.executable, "-m", "nontax_dev.chaos", "--runs", str(RUNS), "--seed", "1"]
    proc = subprocess.Popen(
        [*command, "--workdir", str(tmp_path)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the runner, its sandbox and everything they started
    )
    try:
        output, _ = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        # Ctrl-C: the runner stops after its current run and removes its sandbox and database.
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
        pytest.fail(f"20 chaos runs took more than 8 minutes:\n{output[-4000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == 0, output[-6000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runs"] == RUNS
    assert summary["violations"] == 0
    assert summary["secret_occurrences"] == 0
    assert summary["faults_injected"] >= RUNS  # at least one hit a run, on average
    assert len(summary["fault_kinds"]) >= 8, summary["fault_kinds"]
    # Both DAGs at one run id, the requests run beside a batch holding its orders.
    assert summary["fault_kinds"].get("same_run_id", 0) >= 1, summary["fault_kinds"]
    # Most orders get through; a daily quota (45009, the insert limit) holds the rest of its run
    # back until Beijing midnight, as it must; refused and voided orders ended as asked.
    statuses = summary["statuses"]
    through = sum(statuses.get(s, 0) for s in ("inserted", "cancelled", "refused"))
    assert through + summary["waiting_for_quota"] > 0.8 * summary["orders"]
    # Refusals and voids are drawn too, and carried out (their invariants are checked).
    assert summary["requests_done"].get("refuse", 0) >= 1, summary["requests_done"]
    assert summary["requests_done"].get("void", 0) >= 1, summary["requests_done"]
    assert statuses.get("refused", 0) == summary["requests_done"]["refuse"]
    # The table: a line per run, and the summary.
    assert "invariant violations: 0" in output
    assert sum(1 for line in output.splitlines() if line[:4].strip().isdigit()) == RUNS
