"""wechat_nontax.preload: what the task processes import, imported by their parent (LocalExecutor's
forkserver, Celery's worker) so that no task imports it again."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "plugins" / "wechat_nontax"
# Modules whose code runs in task processes and imports the package's modules when it runs.
RUN_IN_TASKS = (
    "issuing/operators.py", "issuing/issue_operator.py", "requests/operators.py",
    "issuing/run_steps.py", "issuing/batch.py", "wechat/hook.py",
)  # fmt: skip
DAGS = PACKAGE.parents[1] / "dags"
AT_TOP = re.compile(r"^from (wechat_nontax\.[\w.]+) import", re.M)
LAZY = re.compile(
    r"^\s+from (wechat_nontax\.[\w.]+) import|^\s+from wechat_nontax import (\w+)", re.M
)


def _imported_by_preload() -> set[str]:
    code = "import sys, wechat_nontax.preload; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout  # fmt: skip
    return set(out.split())


def test_preload_imports_every_module_the_tasks_import_when_they_run():
    lazy = set()
    for name in RUN_IN_TASKS:
        for dotted, bare in LAZY.findall((PACKAGE / name).read_text(encoding="utf-8")):
            lazy.add(dotted or f"wechat_nontax.{bare}")
    for dag_file in DAGS.glob("*.py"):
        lazy.update(AT_TOP.findall(dag_file.read_text(encoding="utf-8")))
    # the scans find the operators' imports and the DAG files'
    assert {
        "wechat_nontax.wechat.hook", "wechat_nontax.issuing.operators", "wechat_nontax.settings"
    } <= lazy  # fmt: skip
    imported = _imported_by_preload()
    missing = sorted(lazy - imported)
    assert not missing, f"imported by tasks but not by wechat_nontax.preload: {missing}"
    # The task runner's DAG parsing and the HTTP provider (with aiohttp), the costly part.
    for module in ("airflow.dag_processing.dagbag", "airflow.sdk.execution_time.task_runner",
                   "airflow.providers.http.hooks.http", "aiohttp"):  # fmt: skip
        assert module in imported


def test_celery_workers_import_the_preload_with_airflows_own_settings():
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    from wechat_nontax.celery_config import CELERY_CONFIG

    assert CELERY_CONFIG["imports"] == ("wechat_nontax.preload",)
    assert {k: v for k, v in CELERY_CONFIG.items() if k != "imports"} == DEFAULT_CELERY_CONFIG
    settings = (PACKAGE.parents[1] / "docker" / "airflow-celery.env").read_text(encoding="utf-8")
    assert "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=wechat_nontax.celery_config.CELERY_CONFIG" in (
        settings.splitlines()
    )
