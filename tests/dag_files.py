"""Parsing one of the project's DAG files as the dag-processor does, for the import tests."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ParsedDagFile:
    dags: dict[str, Any]
    import_errors: dict[str, str]
    our_warnings: list[warnings.WarningMessage]  # raised from the project's own code
    seconds: float  # the file's parse duration as DagBag measured it


def parse_dag_file(name: str) -> ParsedDagFile:
    """`dags/<name>` through a DagBag, recording the warnings the project's code raised."""
    from airflow.dag_processing.dagbag import DagBag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(ROOT / "dags" / name))
    ours = [w for w in caught if "nontax" in str(w.filename)]
    [stats] = bag.dagbag_stats
    return ParsedDagFile(
        dict(bag.dags), dict(bag.import_errors), ours, stats.duration.total_seconds()
    )


def parse_frequent_dag(name: str, dag_id: str, cron: str) -> Any:
    """`dags/<name>` parsed quickly, cleanly, into the DAG `dag_id`: scheduled at `cron`, one run
    at a time, no catch-up, its `report` task last (the run takes its state)."""
    parsed = parse_dag_file(name)
    assert parsed.import_errors == {} and parsed.our_warnings == []
    assert parsed.seconds < 1.0
    dag = parsed.dags[dag_id]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.timetable.expression == cron
    assert [t.task_id for t in dag.leaves] == ["report"]
    return dag
