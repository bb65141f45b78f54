"""One Airflow home (`airflow dags test`), the order database and the sandbox, for the end-to-end
tests of the DAGs."""

from __future__ import annotations

import psycopg2

from nontax_dev.airflow_run import DagTestResult, airflow_env, dags_test, sandbox_connection
from wechat_nontax.store.connection import connect_dsn
from wechat_nontax.store.orders import OrderStore


class AirflowDesk:
    def __init__(self, dsn, sandbox, home, pdf_root):
        self.dsn, self.sandbox, self.pdf_root = dsn, sandbox, pdf_root
        self.env = airflow_env(
            home, orders_db=dsn, wechat_conn=sandbox_connection(sandbox.url),
            pdf_root=str(pdf_root),
        )  # fmt: skip
        self.store = OrderStore(connect_dsn(dsn))

    def run(self, dag_id: str, conf: dict | None = None) -> DagTestResult:
        """One run of the DAG; it must at least have started."""
        result = dags_test(self.env, conf, dag_id=dag_id)
        assert result.run_id, result.output[-3000:]
        return result

    def sql(self, statement, params=()):
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()
