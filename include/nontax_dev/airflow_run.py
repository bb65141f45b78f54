"""Running the DAG once with `airflow dags test`, for `make run-once`, the demo and the tests.

Everything Airflow needs comes through the environment: the project's folders, an AIRFLOW_HOME
with a SQLite metadata database (fine for `dags test`, one process), and the two Connections as
`AIRFLOW_CONN_...` variables. The task states are read back from that metadata database.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
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
    run_id: str | None
    run_state: str | None
    tasks: list[dict]  # task_id, map_index, state, rendered_map_index, try_number

    def states(self, task_id: str) -> dict[int, str]:
        return {t["map_index"]: t["state"] for t in self.tasks if t["task_id"] == task_id}


def dags_test_command(
    dag_id: str = DAG_ID, conf: dict | None = None, *, run_at: datetime | None = None
) -> list[str]:
    """The command that runs a DAG once (`airflow dags test`). With `run_at`, the run is
    `manual__<run_at>` whatever the clock says, so two DAGs started at one `run_at` share a run
    id, as their scheduled runs at one instant do (`airflow dags test` names the run after
    now)."""
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
    command = dags_test_command(dag_id, conf, run_at=run_at)
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(output, encoding="utf-8")
    run_id, run_state, tasks = latest_run(Path(env["AIRFLOW_HOME"]), dag_id)
    return DagTestResult(done.returncode, output, run_id, run_state, tasks)


def latest_run(home: Path, dag_id: str = DAG_ID) -> tuple[str | None, str | None, list[dict]]:
    """The newest run of a DAG in a SQLite metadata DB, and its task instances."""
    db = sqlite3.connect(home / "airflow.db")
    try:
        db.row_factory = sqlite3.Row
        run = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
            (dag_id,),
        ).fetchone()
        if run is None:
            return None, None, []
        rows = db.execute(
            "SELECT task_id, map_index, state, rendered_map_index, try_number "
            "FROM task_instance WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index",
            (dag_id, run["run_id"]),
        ).fetchall()
        return run["run_id"], run["state"], [dict(row) for row in rows]
    finally:
        db.close()


def _test_at(dag_id: str, run_at: str, conf: str) -> int:
    """`dag.test()` of the DAG file's DAG, its run named after `run_at` (`dags_test_command`)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / f"{dag_id}.py"))
    if bag.import_errors:
        print(bag.import_errors, file=sys.stderr)
        return 1
    at = datetime.fromisoformat(run_at)
    run = bag.dags[dag_id].test(run_after=at, logical_date=at, run_conf=json.loads(conf))
    return 0 if str(getattr(run.state, "value", run.state)) == "success" else 1


if __name__ == "__main__":
    sys.exit(_test_at(*sys.argv[1:4]))
