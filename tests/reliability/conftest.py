"""Fixtures of the reliability tests (the shared ones are in tests/conftest.py)."""

from __future__ import annotations

import pytest
from reliability_helpers import Rig


@pytest.fixture
def make_rig(orders_db, sandbox, tmp_path):
    """make_rig(homes=1, **connection_extras): a Rig on this test's order database, sandbox
    and fresh Airflow homes (a copy of a migrated metadata database each)."""
    rigs = []

    def make(homes: int = 1, **extra) -> Rig:
        rig = Rig(
            orders_db,
            sandbox,
            [tmp_path / f"airflow-{i}" for i in range(homes)],
            tmp_path / "pdfs",
            **extra,
        )
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()
