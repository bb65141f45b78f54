"""The benchmark's pure parts: the CPU accounting arithmetic (bench/cpu_account.py), the order
in which the rows take turns (bench/schedule.py) and the counting of py-spy's samples
(bench/batch_spy.py)."""

from __future__ import annotations

import pytest
from bench.batch_spy import collapsed_shares, function_of, report
from bench.cpu_account import (
    Track,
    breakdown,
    mean_roles,
    role_of,
    used,
)
from bench.schedule import most_at_once, summary, turns

TASK = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
OTHER_TASK = "0199a1b2-c3d4-7e5f-8a9b-000000000000"


def track(pid, ppid, *, first=(0.0, 0.0), last=(0.0, 0.0), born=False, gone=False,
          role="", group="scheduler", depth=1) -> Track:  # fmt: skip
    return Track(pid=pid, ppid=ppid, title="", born_in_window=born, first_own=first[0],
                 first_children=first[1], last_own=last[0], last_children=last[1], gone=gone,
                 role=role, group=group, depth=depth)  # fmt: skip


def test_a_process_alive_across_the_window_counts_its_growth_one_born_in_it_all_of_it():
    tracks = {
        (1, 1): track(1, 0, first=(10.0, 0.0), last=(12.5, 0.0)),
        (2, 2): track(2, 1, first=(0.3, 0.0), last=(4.0, 0.0), born=True),
    }
    assert used(tracks) == {(1, 1): pytest.approx(2.5), (2, 2): pytest.approx(4.0)}


def test_an_exited_childs_tail_comes_from_its_parents_children_counter():
    # The supervisor (alive) reaped the batch process: its children counter grew by the batch's
    # whole life (6.0 s), of which the last reading saw 5.0 s: the 1.0 s tail is the batch's.
    tracks = {
        (1, 1): track(1, 0, first=(2.0, 0.5), last=(2.4, 6.5)),
        (2, 2): track(2, 1, first=(0.1, 0.0), last=(5.0, 0.0), born=True, gone=True),
    }
    result = used(tracks)
    assert result[(2, 2)] == pytest.approx(6.0)
    assert result[(1, 1)] == pytest.approx(0.4)  # its own growth only


def test_tails_of_several_exited_children_are_shared_in_proportion_to_their_use():
    tracks = {
        (1, 1): track(1, 0, last=(0.0, 10.0), born=True),
        (2, 2): track(2, 1, last=(6.0, 0.0), born=True, gone=True),
        (3, 3): track(3, 1, last=(2.0, 0.0), born=True, gone=True),
    }
    result = used(tracks)
    assert result[(2, 2)] == pytest.approx(7.5)
    assert result[(3, 3)] == pytest.approx(2.5)
    assert result[(1, 1)] == pytest.approx(0.0)


def test_a_child_alive_before_the_window_is_not_counted_twice_when_it_exits():
    # It had used 3.0 s before the window and 1.0 s in it by its last reading; the counter grew
    # by its whole life, 4.5 s: 1.5 s in the window.
    tracks = {
        (1, 1): track(1, 0, first=(1.0, 0.0), last=(1.0, 4.5)),
        (2, 2): track(2, 1, first=(3.0, 0.0), last=(4.0, 0.0), gone=True),
    }
    assert used(tracks)[(2, 2)] == pytest.approx(1.5)


def test_a_reaped_child_never_seen_counts_to_its_parent():
    tracks = {(1, 1): track(1, 0, first=(1.0, 0.0), last=(1.2, 0.3))}
    assert used(tracks)[(1, 1)] == pytest.approx(0.5)


def test_postgres_backends_get_no_tail_and_reaped_children_of_an_exited_parent_none():
    tracks = {
        (9, 9): track(9, 5, last=(2.0, 0.0), born=True, gone=True, group="postgres"),
        (2, 2): track(2, 1, last=(1.0, 0.0), born=True, gone=True),  # parent untracked
    }
    assert used(tracks) == {(9, 9): pytest.approx(2.0), (2, 2): pytest.approx(1.0)}


@pytest.mark.parametrize(
    ("title", "group", "depth", "role"),
    [
        (f"airflow worker -- {TASK}", "scheduler", 2, "batch"),
        (f"airflow worker -- {OTHER_TASK}", "worker-1", 2, "other_tasks"),
        ("airflow worker -- LocalExecutor: <idle>", "scheduler", 1, "supervisors"),
        ("airflow worker -- LocalExecutor: claim_orders", "scheduler", 2, "other_tasks"),
        ("airflow supervisor: issue_bills", "worker-2", 1, "supervisors"),
        ("airflow supervisor: report", "worker-2", 2, "other_tasks"),
        ("airflow celery worker --celery-hostname worker-1", "worker-1", 0, "celery_workers"),
        ("airflow scheduler", "scheduler", 0, "scheduler"),
        ("airflow api_server -- host:127.0.0.1 port:8080", "api-server", 0, "api_server"),
        ("gunicorn: worker", "api-server", 1, "api_server"),
        ("airflow dag-processor", "dag-processor", 0, "dag_processor"),
        ("python -m wechat_sandbox --port 1", "sandbox", 0, "sandbox"),
        ("postgres: 15/main: postgres nontax_bench 127.0.0.1(5) idle", "postgres", 1,
         "postgres_orders"),
        ("postgres: postgres airflow_bench_meta 127.0.0.1(5) idle", "postgres", 1,
         "postgres_meta"),
        ("postgres: 15/main: autovacuum worker nontax_bench", "postgres", 1,
         "postgres_orders"),
        ("postgres: 15/main: postgres somebody_elses 127.0.0.1(5) idle", "postgres", 1, ""),
        ("postgres: 15/main: walwriter", "postgres", 1, ""),
    ],
)  # fmt: skip
def test_roles_from_titles_and_the_place_below_the_stack_leader(title, group, depth, role):
    databases = {"nontax_bench": "postgres_orders", "airflow_bench_meta": "postgres_meta"}
    task_ids = {TASK: "issue_bills", OTHER_TASK: "claim_orders"}
    assert role_of(title, group, depth, task_ids, databases) == role


def test_breakdown_per_order_and_the_pipeline_sum():
    tracks = {
        (1, 1): track(1, 0, last=(3.0, 0.0), born=True, role="batch"),
        (2, 2): track(2, 0, last=(1.0, 0.0), born=True, role="batch"),
        (3, 3): track(3, 0, last=(2.0, 0.0), born=True, role="postgres_orders", group="postgres"),
        (4, 4): track(4, 0, last=(0.5, 0.0), born=True, role="scheduler"),
        (5, 5): track(5, 0, last=(1.5, 0.0), born=True, role="sandbox"),
        (6, 6): track(6, 0, last=(9.0, 0.0), born=True, role=""),  # not ours: left out
    }
    result = breakdown(tracks, orders=1000)
    assert result["cpu_ms_per_order_pipeline"] == pytest.approx(6.0)
    assert result["cpu_ms_per_order_airflow"] == pytest.approx(0.5)
    assert result["cpu_ms_per_order_sandbox"] == pytest.approx(1.5)
    assert result["cpu_ms_per_order_all"] == pytest.approx(8.0)
    assert result["roles"]["batch"] == {"cpu_s": 4.0, "processes": 2, "ms_per_order": 4.0}
    assert next(iter(result["roles"])) == "batch"  # the largest first


def test_mean_roles_counts_a_missing_role_as_zero():
    reports = [{"roles": {"batch": {"ms_per_order": 3.0}, "sandbox": {"ms_per_order": 1.0}}},
               {"roles": {"batch": {"ms_per_order": 5.0}}}]  # fmt: skip
    assert mean_roles(reports) == {"batch": 4.0, "sandbox": 0.5}


def test_rows_take_turns_every_other_round_reversed():
    assert turns(["ceiling", "local", "celery"], 3) == [
        (0, "ceiling"), (0, "local"), (0, "celery"),
        (1, "celery"), (1, "local"), (1, "ceiling"),
        (2, "ceiling"), (2, "local"), (2, "celery"),
    ]  # fmt: skip
    assert turns(["a"], 0) == []


def test_summary_best_median_and_samples_in_order():
    assert summary([200.0, 250.5, 230.0]) == {
        "best": 250.5, "median": 230.0, "samples": [200.0, 250.5, 230.0]
    }  # fmt: skip
    assert summary([1.0, 2.0])["median"] == 1.5


def test_most_at_once_per_host():
    spans = [("worker-1", 0.0, 10.0), ("worker-1", 1.0, 5.0), ("worker-1", 5.0, 8.0),
             ("worker-2", 2.0, 3.0)]  # fmt: skip
    assert most_at_once(spans) == {"worker-1": 2, "worker-2": 1}


def test_py_spy_stacks_counted_per_function_inclusive_once_and_own_innermost():
    assert function_of("_write (plugins/wechat_nontax/store.py:668)") == (
        "_write (plugins/wechat_nontax/store.py)"
    )
    lines = [
        "process 12:airflow;run (t.py:1);_one (issuing.py:2);_write (store.py:3) 5",
        "run (t.py:1);_one (issuing.py:2);_one (issuing.py:9) 3",  # recursion: counted once
        "run (t.py:1);_send (hook.py:4) 2",
        "a line without a count",
    ]
    inclusive, own, total = collapsed_shares(lines)
    assert total == 10
    assert inclusive["run (t.py)"] == 10
    assert inclusive["_one (issuing.py)"] == 8
    assert own == {"_write (store.py)": 5, "_one (issuing.py)": 3, "_send (hook.py)": 2}


def test_the_spy_report_gives_the_runs_roles_then_the_functions_in_ms_per_order():
    inclusive, own, total = collapsed_shares(["run (t.py:1);_one (issuing.py:2) 3",
                                              "run (t.py:1) 1"])  # fmt: skip
    roles = {"batch": {"cpu_s": 20.0, "processes": 4, "ms_per_order": 2.0},
             "postgres_orders": {"cpu_s": 5.0, "processes": 9, "ms_per_order": 0.5}}  # fmt: skip
    text = report(inclusive, own, total, {"roles": roles}, top=5)
    lines = text.splitlines()
    assert lines[0] == "4 samples (CPU) of the run's batches; 2.000 ms per order in all"
    assert "    2.000  batch (4 processes)" in lines
    assert "    0.500  postgres_orders (9 processes)" in lines
    # Three of the four samples in _one: three quarters of the batch's 2.0 ms.
    assert "  75.0%     1.500  _one (issuing.py)" in lines
