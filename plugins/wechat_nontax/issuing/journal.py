"""Bills WeChat issued that the order database could not record: kept in Airflow until it can.

WeChat has no call to look a bill up by order_id: an insert's code and openid exist only in
its answer. When the order database stays away longer than the write-back's retries, the batch
logs each such bill and keeps it here, in an Airflow Variable (Airflow's own database, reached
through the API server, not the order database), one per task try, written once. Before
anything else, the next try of that batch, the run's report and every run's claim write them to
the order database and delete the Variable, so the order is recorded `inserted` before
anything could send it again. A person can read them in Admin -> Variables meanwhile (codes
are not secrets).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from wechat_nontax.store.orders import OrderStore

PREFIX = "nontax_unrecorded__"
log = logging.getLogger(__name__)


def run_name(dag_id: str, run_id: str) -> str:
    """How a run's keys name it: its DAG too, since run ids are unique per DAG only (a key
    written again by another DAG's batch of the same run id would lose the first one's bills)."""
    return f"{dag_id}__{run_id}"


def key_for(run: str, map_index: int, try_number: int) -> str:
    return f"{PREFIX}{run}__{map_index}__{try_number}"


def keys_of(run: str | None = None, map_index: int | None = None) -> list[str]:
    """The kept keys (of a run, by `run_name`; of one of its batches), as Airflow lists them
    (every key, those kept before keys named their DAG too, without `run`)."""
    from airflow.sdk import Variable

    prefix = PREFIX
    if run is not None:
        prefix += f"{run}__" + (f"{map_index}__" if map_index is not None else "")
    return list(Variable.keys(prefix=prefix))  # a lazy proxy: read it here


def keep(key: str, bills: Sequence[dict[str, Any]]) -> None:
    """Keep `bills` ({order_id, code, openid, version, run_id}) under `key`, one per task try
    and written once: no read-modify-write that a zombie try could race."""
    from airflow.sdk import Variable

    Variable.set(key, json.dumps(list(bills)), description="bills issued but not yet recorded")


def replay(store: OrderStore, *, keys: Sequence[str]) -> int:
    """Write the bills kept under `keys` to the order database; delete each key once its
    bills are written. Returns how many bills were written. Raises if the order database is away."""
    from airflow.sdk import Variable

    written = 0
    for key in keys:
        raw = Variable.get(key, default=None)
        if raw is None:
            continue
        for bill in json.loads(raw):
            store.record_inserted(
                bill["order_id"], bill["code"], bill["openid"], version=bill["version"],
                run_id=bill.get("run_id"), step="recover",
            )  # fmt: skip
            log.info("recorded the kept bill of order %s (code %s)", bill["order_id"], bill["code"])
            written += 1
        Variable.delete(key)
    return written
