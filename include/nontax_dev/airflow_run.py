"""Running the DAG once with `DAG.test()`, for `make run-once`, the demo and the tests.

Everything Airflow needs comes through the environment: the project's folders, an AIRFLOW_HOME
with a SQLite metadata database (fine for `dags test`, one process), and the two Connections as
`AIRFLOW_CONN_...` variables. A run goes in a process of its own (`python -m
nontax_dev.airflow_run`: the DAG file's DAG, `dag.test()`, what `airflow dags test` runs), which
prints at its end the run's task instances from the DagRun `dag.test()` returned: one line the
caller reads, where a query through the `airflow` CLI would cost an interpreter loading Airflow
(seconds) each. A run whose process was killed is read back through the CLI: `airflow tasks
states-for-dag-run -o json`, the newest run from `airflow dags list-runs -o json`. How many
tries an instance took comes from the run's own console (`DAG.test()` says when it starts each
try).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg2.extensions

# The DAG ids, under the names the harness and the tests use.
from wechat_nontax.settings import INSERTBILL_DAG_ID as DAG_ID
from wechat_nontax.settings import REQUESTS_DAG_ID as REQUESTS_DAG_ID
from wechat_nontax.settings import WAITING_DAG_ID as WAITING_DAG_ID

ROOT = Path(__file__).resolve().parent.parent.parent
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
# The package's console script (the unit's commands), installed beside it.
NONTAX = str(Path(sys.executable).with_name("nontax"))
# What `airflow dags test` says (and exits 1) when the run it ran failed.
RUN_FAILED = "DagRun failed"
# The line on which a run's process reports its task instances (JSON follows).
TASKS_LINE = "nontax_dev.airflow_run task instances: "


def airflow_env(
    home: Path,
    *,
    orders_db: str | None = None,
    wechat_conn: str | None = None,
    pdf_root: str | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of an Airflow process for this project (connections given win over
    the ones already in `base`)."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            # The Bills plugin comes by the package's entry point: this folder stays empty, so
            # nothing of ours is imported twice by the plugins manager's scan.
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
            # The harness and the DAG files; the package is installed.
            "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), str(ROOT / "dags")]),
        }
    )
    if not env.get("AIRFLOW__CORE__FERNET_KEY"):
        # The token cache encrypts with it and refuses to work without one; `dags test` in a
        # fresh home has none. One per home, so a cached token stays readable across runs.
        env["AIRFLOW__CORE__FERNET_KEY"] = _home_fernet_key(home)
    if orders_db:
        env["AIRFLOW_CONN_NONTAX_ORDERS_DB"] = orders_db
    if wechat_conn:
        env["AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT"] = wechat_conn
    if pdf_root:
        env["NONTAX_PDF_ROOT"] = pdf_root
    return env


def _home_fernet_key(home: Path) -> str:
    path = home / "fernet.key"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    import base64

    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the start
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key)
    return key


def orders_connection(dsn: str) -> str:
    """The `nontax_orders_db` Connection (Airflow's JSON form) for a libpq DSN. JSON rather than
    a URI because a Unix socket directory (an embedded server's host) does not survive Airflow's
    URI parsing."""
    parts = dict(psycopg2.extensions.parse_dsn(dsn))
    conn: dict[str, Any] = {
        "conn_type": "postgres",
        "host": parts.pop("host", None) or "127.0.0.1",
        "port": int(parts.pop("port", None) or 5432),
        "login": parts.pop("user", None),
        "password": parts.pop("password", None),
        "schema": parts.pop("dbname", None),
    }
    conn = {k: v for k, v in conn.items() if v is not None}
    if parts:
        conn["extra"] = parts
    return json.dumps(conn)


def sandbox_connection(url: str, **extra: object) -> str:
    """The `wechat_nontax_default` Connection (Airflow's JSON form) for a sandbox at `url`."""
    from wechat_sandbox.client import DEFAULT_APPID, DEFAULT_SECRET

    return json.dumps(
        {
            "conn_type": "http",
            "host": url,
            "login": DEFAULT_APPID,
            "password": DEFAULT_SECRET,
            "extra": {"timeout": 10, **extra},
        }
    )


def ensure_metadata_db(env: dict[str, str]) -> None:
    """A migrated metadata database once per AIRFLOW_HOME (skipped when done)."""
    home = Path(env["AIRFLOW_HOME"])
    stamp = home / ".migrated"
    if stamp.exists():
        return
    copy_migrated_metadata_db(home, env)
    stamp.touch()


def copy_migrated_metadata_db(home: Path, env: dict[str, str]) -> None:
    """A migrated SQLite metadata database in `home`: a copy of a template that `airflow db
    migrate` made once for this Airflow version (it takes seconds, the copy milliseconds),
    under a lock so that concurrent callers make it once."""
    template = ROOT / ".airflow" / f"metadata-template-{version('apache-airflow')}"
    template.mkdir(parents=True, exist_ok=True)
    with (template / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = template / ".migrated"
        if not stamp.exists():
            subprocess.run(
                [AIRFLOW, "db", "migrate"],
                env={**env, "AIRFLOW_HOME": str(template)},
                check=True,
                capture_output=True,
                text=True,
            )
            stamp.touch()
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template / "airflow.db", home / "airflow.db")


@dataclass(frozen=True)
class DagTestResult:
    returncode: int
    output: str
    run_state: str | None
    logical_date: datetime
    env: dict[str, str] = field(repr=False, default_factory=dict)
    dag_id: str = DAG_ID
    known_run_id: str | None = None  # a run named after its `run_at`

    # Read when first asked for: the CLI takes seconds, and a caller timing the run must not
    # wait for them.
    @cached_property
    def run_id(self) -> str | None:
        if self.run_state is None:
            return None
        if self.known_run_id:
            return self.known_run_id
        at = self.logical_date.isoformat()  # `airflow dags test` names the run after now
        runs = _cli_json(self.env, "dags", "list-runs", self.dag_id)
        return next((r["run_id"] for r in runs if r["logical_date"] == at), None)

    @cached_property
    def tasks(self) -> list[dict]:
        """The run's task instances (task_id, map_index, state, try_number), as its process
        reported them, else as the CLI shows them."""
        if self.run_state is None:
            return []
        reported = [line for line in self.output.splitlines() if line.startswith(TASKS_LINE)]
        if reported:
            return _with_tries(json.loads(reported[-1][len(TASKS_LINE) :]), self.output)
        at = self.logical_date.isoformat()  # the CLI finds a run by its logical date too
        return task_instances(self.env, self.dag_id, at, output=self.output)

    def states(self, task_id: str) -> dict[int, str]:
        return {t["map_index"]: t["state"] for t in self.tasks if t["task_id"] == task_id}


def dags_test_command(
    dag_id: str = DAG_ID, conf: dict | None = None, *, run_at: datetime | None = None
) -> list[str]:
    """The command that runs a DAG once. Without `run_at`, `airflow dags test` itself (its run
    named after now). With `run_at`, the DAG file's `dag.test()` in a process of ours (see the
    module's docstring), the run `manual__<run_at>` whatever the clock says, so two DAGs started
    at one `run_at` share a run id, as their scheduled runs at one instant do."""
    if run_at is None:
        return [AIRFLOW, "dags", "test", dag_id, *(["-c", json.dumps(conf)] if conf else [])]
    return [
        sys.executable, "-m", "nontax_dev.airflow_run", dag_id, run_at.isoformat(),
        json.dumps(conf or {}),
    ]  # fmt: skip


def dags_test(
    env: dict[str, str],
    conf: dict | None = None,
    *,
    log_file: Path | None = None,
    timeout: float = 900,
    dag_id: str = DAG_ID,
    run_at: datetime | None = None,
) -> DagTestResult:
    """Run a DAG (the issuing one unless `dag_id` says) once in one process; returns its exit
    code, output and task states."""
    ensure_metadata_db(env)
    # The run named before it starts, after now unless `run_at` says (as `airflow dags test`).
    run_at = run_at or datetime.now(UTC)
    command = dags_test_command(dag_id, conf, run_at=run_at)
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(output, encoding="utf-8")
    # Both commands exit 0 when the run succeeded and say "DagRun failed" when it failed.
    run_state = "success" if done.returncode == 0 else None
    if run_state is None and RUN_FAILED in output:
        run_state = "failed"
    known = f"manual__{run_at.isoformat()}"
    return DagTestResult(done.returncode, output, run_state, run_at, env, dag_id, known)


def latest_run(
    env: dict[str, str], dag_id: str = DAG_ID, *, output: str = ""
) -> tuple[str | None, str | None, list[dict]]:
    """The newest run of a DAG in the metadata DB of `env` and its task instances, as the
    `airflow` CLI shows them (JSON); each instance's `try_number` counted in `output`, the
    console of the `DAG.test()` that ran it (0 when not given)."""
    runs = _cli_json(env, "dags", "list-runs", dag_id)  # newest first (by run_after)
    if not runs:
        return None, None, []
    run = runs[0]
    return run["run_id"], run["state"], task_instances(env, dag_id, run["run_id"], output=output)


def task_instances(
    env: dict[str, str], dag_id: str, run_id: str, *, output: str = ""
) -> list[dict]:
    """The task instances of a DAG's run (its run id or logical date) as `airflow tasks
    states-for-dag-run` shows them, each
    one's `try_number` counted in `output` (the console of the `DAG.test()` that ran it)."""
    labels = _rendered_map_indexes(env, dag_id, run_id)
    tasks = []
    for ti in _cli_json(env, "tasks", "states-for-dag-run", dag_id, run_id):
        map_index = int(ti.get("map_index") or -1)
        tasks.append(
            {
                "task_id": ti["task_id"],
                "map_index": map_index,
                "state": ti["state"] or None,
                "rendered_map_index": labels.get((ti["task_id"], map_index)),
            }
        )
    return _with_tries(tasks, output)


def _with_tries(tasks: list[dict], output: str) -> list[dict]:
    """The instances sorted, each with how many tries the console `output` shows it took."""
    for ti in tasks:
        ti["try_number"] = tries_in_output(output, ti["task_id"], ti["map_index"])
    return sorted(tasks, key=lambda t: (t["task_id"], t["map_index"]))


def _rendered_map_indexes(env: dict[str, str], dag_id: str, run: str) -> dict[tuple[str, int], str]:
    """Each mapped instance's rendered label (`map_index_template`) of a run (its run id or
    logical date). Read from the metadata database itself: neither the CLI's
    `states-for-dag-run` nor anything else public shows it without an api-server, and
    `airflow dags test` runs without one; read only, this one column."""
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT ti.task_id, ti.map_index, ti.rendered_map_index FROM task_instance ti "
            "JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id "
            "WHERE ti.dag_id = ? AND (r.run_id = ? OR replace(r.logical_date, ' ', 'T') "
            "|| '+00:00' = ?)",
            (dag_id, run, run.replace("+00:00", "") + "+00:00"),
        ).fetchall()
    finally:
        conn.close()
    return {(task_id, map_index): label for task_id, map_index, label in rows if label}


def tries_in_output(output: str, task_id: str, map_index: int = -1) -> int:
    """How often `DAG.test()` started the instance, by its console's own line for each try."""
    line = rf"\[DAG TEST\] starting task_id={re.escape(task_id)} map_index={map_index}\b"
    return len(re.findall(line, output))


def _cli_json(env: dict[str, str], *command: str) -> list[dict[str, Any]]:
    """An `airflow` CLI command's `-o json` output ([] when it names nothing: a DAG that never
    ran, a run that is not there)."""
    done = subprocess.run(
        [AIRFLOW, *command, "-o", "json"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        if "not found" in done.stderr or "does not exist" in done.stderr + done.stdout:
            return []
        raise RuntimeError(f"airflow {' '.join(command)}: {done.stderr[-2000:]}")
    found = re.search(r"^\[", done.stdout, re.MULTILINE)  # after any warning on its way
    return json.loads(done.stdout[found.start() :]) if found else []


def _test_at(dag_id: str, run_at: str, conf: str) -> int:
    """`dag.test()` of the DAG file's DAG, its run named after `run_at` (`dags_test_command`)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / f"{dag_id}.py"))
    if bag.import_errors:
        print(bag.import_errors, file=sys.stderr)
        return 1
    at = datetime.fromisoformat(run_at)
    run = bag.dags[dag_id].test(run_after=at, logical_date=at, run_conf=json.loads(conf))
    tasks = [
        {
            "task_id": ti.task_id,
            "map_index": ti.map_index,
            "state": _value(ti.state),
            "rendered_map_index": ti.rendered_map_index,
        }
        for ti in run.get_task_instances()
    ]
    print(TASKS_LINE + json.dumps(tasks), flush=True)
    if _value(run.state) == "success":
        return 0
    print(RUN_FAILED, file=sys.stderr)  # as `airflow dags test` says it
    return 1


def _value(state: Any) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


if __name__ == "__main__":
    sys.exit(_test_at(*sys.argv[1:4]))
