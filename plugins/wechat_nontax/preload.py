"""What this project's task processes import, imported once by the process they are forked from.

Airflow forks a new process for every task try, from a LocalExecutor worker or a Celery pool
process. Neither has imported the task runner's DAG parsing, the HTTP provider (with `aiohttp`),
`requests` or this package, so each batch imported them anew: a quarter of a 2,500-order
batch's CPU, 0.27 ms per order (`bench/batch_spy.py`). A module imported in the parent is
shared by every fork, copy-on-write, and costs a task nothing.

Named where Airflow starts the task processes' parents:
- LocalExecutor: `[scheduler] mp_start_method = forkserver` and `[scheduler] mp_forkserver_preload
  = wechat_nontax.preload` (the workers are forked from a forkserver that imported this);
- Celery: `celery_config.CELERY_CONFIG`'s `imports` (the worker's main process imports this
  before it forks its pool).
The DAG files keep their own imports light (they are parsed every 30 s); this is for the tasks.
"""

from __future__ import annotations

# The task runner, and the DAG bag it parses the DAG file with.
import airflow.dag_processing.dagbag
import airflow.sdk.execution_time.task_runner

# What the tasks run, and what the DAG files import (the DAG arguments).
import wechat_nontax.dag_arguments
import wechat_nontax.issuing.batch
import wechat_nontax.issuing.dag_parts
import wechat_nontax.issuing.issue_operator
import wechat_nontax.issuing.journal
import wechat_nontax.issuing.operators
import wechat_nontax.issuing.pdfs
import wechat_nontax.issuing.run_steps
import wechat_nontax.requests.operators
import wechat_nontax.requests.runner
import wechat_nontax.requests.store

# What the DAG files import (the task runner parses the task's DAG file again), and what the
# operators import when they run (lazily, to keep the DAG files quick to parse).
import wechat_nontax.settings
import wechat_nontax.store.connection
import wechat_nontax.store.orders
import wechat_nontax.wechat.hook
import wechat_nontax.wechat.validation
