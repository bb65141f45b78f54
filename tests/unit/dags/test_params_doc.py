"""docs/configuration.md states every bound of the DAG's params as the DAG enforces it (a person
reading "at most 2500" must not be able to trigger 5000)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "nontax_insertbill.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["nontax_insertbill"]


def test_every_bound_of_the_params_is_in_the_configuration_doc():
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    bounded = 0
    for name, param in _dag().params.items():
        schema = getattr(param, "schema", {})
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and high is not None:
            assert f"`{name}` ({low} to {high}" in doc, name
            bounded += 1
        elif low is not None:
            assert f"`{name}` (at least {low}" in doc, name
            bounded += 1
    assert bounded == 4
