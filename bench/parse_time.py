"""How long the DAG file takes to parse, as the dag-processor sees it.

The dag-processor parses a file in a process forked from one that has Airflow's processing
machinery imported, while the file's own imports (our package) are fresh each time. So each
sample is a new interpreter that imports `airflow.dag_processing.processor` first and then times
the parse of `dags/nontax_insertbill.py` alone (DagBag's own measure of it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_SAMPLE = """
import json, time, warnings
warnings.simplefilter("ignore")
import airflow.dag_processing.processor  # what a dag-processor has loaded before it parses
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder={path!r})
elapsed = time.perf_counter() - started
assert not bag.import_errors, bag.import_errors
[stats] = bag.dagbag_stats
print(json.dumps({{"wall_ms": elapsed * 1000, "dagbag_ms": stats.duration.total_seconds() * 1000}}))
"""


def parse_ms(samples: int = 5, env: dict[str, str] | None = None) -> dict:
    path = str(ROOT / "dags" / "nontax_insertbill.py")
    env = dict(env or os.environ)
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("include", "dags"))
    runs = []
    for _ in range(samples):
        out = subprocess.run(
            [sys.executable, "-c", _SAMPLE.format(path=path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    dagbag = [r["dagbag_ms"] for r in runs]
    return {"parse_ms": round(statistics.median(dagbag), 1), "samples_ms": dagbag}


if __name__ == "__main__":
    print(json.dumps(parse_ms()))
