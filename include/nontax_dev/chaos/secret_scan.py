"""The secret scan: the sandbox's access tokens and the app secret, counted wherever they must
never be: the order database's free texts, Airflow's output and its task logs. (What Airflow
keeps in XComs and rendered fields is searched through its REST API: nontax_dev.chaos.on_duty.)"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def secrets_in_order_db(db: Any, secrets: Sequence[str]) -> int:
    """Occurrences of `secrets` in the order database's free texts: reasons, errmsgs, history."""
    with db.cursor() as cur:
        cur.execute(
            """
            SELECT (SELECT count(*) FROM nontax.bill_order o, unnest(%(s)s::text[]) s
                     WHERE strpos(concat_ws(' ', o.reason, o.last_errmsg, o.s_pdf_media_id,
                                            o.code, o.openid), s) > 0)
                 + (SELECT count(*) FROM nontax.bill_attempt a, unnest(%(s)s::text[]) s
                     WHERE strpos(coalesce(a.errmsg, ''), s) > 0)
            """,
            {"s": list(secrets)},
        )
        hits = int(cur.fetchone()[0])
    db.commit()
    return hits


def secrets_in_text(text: str, secrets: Iterable[str]) -> int:
    return sum(text.count(secret) for secret in secrets)


def secrets_in_task_logs(logs: Path, secrets: Iterable[str]) -> int:
    """Occurrences of `secrets` in the task log files under `logs` (Airflow's home's logs)."""
    hits = 0
    for path in logs.rglob("*") if logs.exists() else ():
        if path.is_file():
            hits += secrets_in_text(path.read_text("utf-8", "replace"), secrets)
    return hits
