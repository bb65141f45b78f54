"""The harness's count of an instance's tries in the console of the `DAG.test()` that ran it
(nontax_dev.airflow_run.tries_in_output)."""

from __future__ import annotations

from nontax_dev.airflow_run import tries_in_output

CONSOLE = """\
2026-12-07T11:00:00.1Z [info     ] [DAG TEST] starting task_id=claim_orders map_index=-1 [sdk]
2026-12-07T11:00:01.1Z [info     ] [DAG TEST] starting task_id=issue_bills map_index=0 [sdk]
2026-12-07T11:00:01.2Z [info     ] [DAG TEST] starting task_id=issue_bills map_index=10 [sdk]
2026-12-07T11:00:03.1Z [info     ] [DAG TEST] starting task_id=issue_bills map_index=0 [sdk]
2026-12-07T11:00:04.1Z [info     ] [DAG TEST] running task <TaskInstance: issue_bills map_index=1>
"""


def test_each_start_of_an_instance_is_one_try_and_other_instances_do_not_count():
    assert tries_in_output(CONSOLE, "issue_bills", 0) == 2
    assert tries_in_output(CONSOLE, "issue_bills", 10) == 1
    assert tries_in_output(CONSOLE, "issue_bills", 1) == 0  # not a start line
    assert tries_in_output(CONSOLE, "claim_orders") == 1
    assert tries_in_output(CONSOLE, "claim") == 0
    assert tries_in_output("", "issue_bills", 0) == 0
