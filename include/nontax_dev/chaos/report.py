"""What the runs came to, as the runner prints it: a line per run, the legend, the summary, and
the summary's JSON beside Airflow's output."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nontax_dev.chaos.checks import NEEDS_REASON
from nontax_dev.chaos.plan import RunPlan
from wechat_nontax.wechat.statuses import Status


@dataclass
class RunResult:
    plan: RunPlan
    seconds: float
    fault_hits: Counter
    dag_runs: int
    reruns: int
    statuses: Counter
    token_expiries: int
    token_fetches: int
    violations: list[str]
    secret_hits: int = 0
    requests_done: Counter = field(default_factory=Counter)  # refuse / void carried out
    quota_waiting: int = 0  # orders still due at the end, waiting for a daily quota's reset


HEAD = (
    f"{'run':>4} {'orders':>6} {'faults (hits)':<48} {'hits':>4} {'exp':>3} {'fetch':>5} "
    f"{'ins':>3} {'dup':>3} {'end':>3} {'due':>3} {'dag':>3} {'re':>2} {'s':>5}  violations"
)


# How the table names the faults (the summary uses the full names).
SHORT = {
    "latency": "latency", "latency_spike": "spike", "http_5xx": "5xx", "timeout": "timeout",
    "busy": "-1", "busy_order": "-1x4", "invoice_busy": "72036", "minute_quota": "45011",
    "daily_quota": "45009", "token_expire": "expiry", "lost_answer": "lost",
    "unauthorized": "72038", "rejected": "72035", "db_drop": "db-drop",
    "refuse": "refused", "void": "voided",
    "late_auth": "auth-late", "refuses": "refuse", "insert_limit": "72057",
    "request_quota": "req-45009", "auth_quota": "auth-45009", "refuse_mid_batch": "refuse-mid",
    "same_run_id": "one-run-id",
}  # fmt: skip


LEGEND = (
    "faults: sandbox fault rules and WeChat refusals, with how often each hit (and the "
    "requests carried out: refused, voided); exp: token "
    "expiries injected; fetch: token fetches\n"
    "orders at the end: ins inserted, dup duplicate (answer lost after WeChat recorded the "
    "bill), end ended with a reason (invalid, failed, rejected, refused, cancelled), due still "
    "due and waiting\n"
    "dag: DAG runs; re: instances re-run by the person on duty; s: seconds"
)


def format_row(r: RunResult) -> str:
    faults = " ".join(
        [f"{SHORT.get(k, k)}:{n}" for k, n in sorted(r.fault_hits.items())]
        + [f"{SHORT[k]}:{n}" for k, n in sorted(r.requests_done.items())]
    )
    ended = sum(n for s, n in r.statuses.items() if s in NEEDS_REASON - {Status.DUPLICATE})
    due = sum(n for s, n in r.statuses.items() if s in Status.DUE)
    return (
        f"{r.plan.run:>4} {len(r.plan.order_ids):>6} {faults[:48]:<48} "
        f"{sum(r.fault_hits.values()):>4} {r.token_expiries:>3} {r.token_fetches:>5} "
        f"{r.statuses.get(Status.INSERTED, 0):>3} {r.statuses.get(Status.DUPLICATE, 0):>3} "
        f"{ended:>3} "
        f"{due:>3} {r.dag_runs:>3} {r.reruns:>2} {r.seconds:>5.1f}  {len(r.violations)}"
    )


@dataclass
class Summary:
    runs: int
    orders: int
    faults_injected: int
    fault_kinds: Counter
    violations: int
    secret_occurrences: int
    seconds: float
    statuses: Counter
    dag_runs: int = 0
    reruns: int = 0
    bad_orders: int = 0
    interrupted: bool = False
    requests_done: Counter = field(default_factory=Counter)
    quota_waiting: int = 0

    def __str__(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.fault_kinds.items()))
        statuses = ", ".join(f"{k} {n}" for k, n in sorted(self.statuses.items()))
        return (
            f"runs: {self.runs}, orders: {self.orders}, faults injected: {self.faults_injected}, "
            f"invariant violations: {self.violations}, secret occurrences: "
            f"{self.secret_occurrences}, duration: {self.seconds:.0f} s"
            f"{' (interrupted)' if self.interrupted else ''}\n"
            f"DAG runs: {self.dag_runs}, instances re-run by the person on duty: {self.reruns}, "
            f"orders seeded with bad data: {self.bad_orders}\n"
            f"faults by kind (hits): {kinds}\n"
            f"requests carried out: "
            f"{', '.join(f'{k} {n}' for k, n in sorted(self.requests_done.items())) or '-'}\n"
            f"orders by final status: {statuses} ({self.quota_waiting} of the due ones waiting "
            "for a daily quota's reset)"
        )

    @classmethod
    def of(
        cls, results: Sequence[RunResult], *, task_log_hits: int, seconds: float, interrupted: bool
    ) -> Summary:
        """The summary of `results`; a secret in Airflow's task logs counts as one violation."""
        return cls(
            runs=len(results),
            orders=sum(len(r.plan.order_ids) for r in results),
            faults_injected=sum(sum(r.fault_hits.values()) for r in results),
            fault_kinds=sum((r.fault_hits for r in results), Counter()),
            violations=sum(len(r.violations) for r in results) + (1 if task_log_hits else 0),
            secret_occurrences=task_log_hits + sum(r.secret_hits for r in results),
            seconds=seconds,
            statuses=sum((r.statuses for r in results), Counter()),
            dag_runs=sum(r.dag_runs for r in results),
            reruns=sum(r.reruns for r in results),
            bad_orders=sum(len(r.plan.bad) for r in results),
            interrupted=interrupted,
            requests_done=sum((r.requests_done for r in results), Counter()),
            quota_waiting=sum(r.quota_waiting for r in results),
        )

    def write_json(self, path: Path, seed: int) -> None:
        path.write_text(
            json.dumps(
                {
                    "runs": self.runs,
                    "seed": seed,
                    "orders": self.orders,
                    "faults_injected": self.faults_injected,
                    "fault_kinds": dict(self.fault_kinds),
                    "violations": self.violations,
                    "secret_occurrences": self.secret_occurrences,
                    "seconds": round(self.seconds, 1),
                    "statuses": dict(self.statuses),
                    "dag_runs": self.dag_runs,
                    "reruns": self.reruns,
                    "bad_orders": self.bad_orders,
                    "requests_done": dict(self.requests_done),
                    "waiting_for_quota": self.quota_waiting,
                },
                indent=2,
            )
        )
