"""A run's plan, drawn from (SEED, run): its orders, batches, sandbox faults, bad data, late
payers and requests to refuse or void. Pure: the same (SEED, run) gives the same plan, and every
fault rule carries its own seed, so that the sandbox's draws repeat too."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wechat_nontax.wechat.statuses import Step

# The faults' shortened clocks (see nontax_dev.chaos): an answer held, a spike, past the
# client's timeout (nontax_dev.chaos.dags.CLIENT_TIMEOUT_S).
HELD_ANSWER_S = 3.0
SPIKE_MS = 3000

FAULT_KINDS = (
    "latency",
    "latency_spike",
    "http_5xx",
    "timeout",
    "busy",
    "busy_order",
    "invoice_busy",
    "minute_quota",
    "daily_quota",
    "token_expire",
    "lost_answer",
)
# Bad data the order table accepts (fee <= 0, a reused billing pair and non-numbers are refused
# by the database itself: tests/reliability/test_bad_input.py covers those at load).
BAD_KINDS = (
    "title_empty",
    "title_control",
    "billing_time_ms",
    "billing_time_future",
    "fee_huge",
    "pdf_missing",
    "pdf_not_pdf",
    "pdf_empty",
    "pdf_path_escape",
    "billing_no_sql",
)
# The sandbox endpoints behind each `nontax.api_quota` api (the package's steps).
QUOTA_ENDPOINTS = {
    Step.INSERT: ("insertbill",),
    Step.UPLOAD: ("setpdf",),
    Step.AUTHORIZATION: ("getauthdata",),
    Step.TOKEN: ("stable_token", "token"),
    Step.REFUSE: ("rejectinsert",),
    Step.VOID: ("updatestatus",),
}


def order_id(seed: int, run: int, n: int) -> str:
    return f"X{seed}R{run:04d}N{n:03d}"


@dataclass(frozen=True)
class RunPlan:
    run: int
    order_ids: tuple[str, ...]
    batch_size: int
    workers: int
    faults: tuple[tuple[str, dict[str, Any]], ...]  # (kind, sandbox fault rule)
    bad: tuple[tuple[str, str], ...] = ()  # (order id, bad kind)
    authorizations: tuple[tuple[str, str], ...] = ()  # (order id, unauthorized|rejected)
    # Cut the batches' order-database connections once bills start to arrive: the write-backs
    # must reconnect and record every code (not a sandbox fault: the runner does it).
    db_drop: bool = False
    # Requests to refuse (asked before the run) or void (asked after it) good orders: carried
    # out by the DAG nontax_requests, faults on, then once more after the person's fix.
    requests: tuple[tuple[str, str], ...] = ()  # (order id, refuse|void)
    # Payers not authorised at first (72038) who answer before the last round: (order id,
    # "authorized" | "rejected").
    payers_later: tuple[tuple[str, str], ...] = ()
    # The sandbox's daily insert limit for the run (72057 past it), None for none.
    insert_limit: int | None = None
    # getauthdata answers 45009 to the first look of the last round (its daily quota), and
    # these good orders are left out of the first run: the last round's batch sends them beside
    # the looks, which must not hold them back.
    auth_quota: bool = False
    held_back: tuple[str, ...] = ()
    # Orders late in the batches whose refusal is asked once the first bills arrive.
    refused_mid_batch: tuple[str, ...] = ()
    # Both DAGs at one run id: the requests DAG's tasks run with the issuing run's run id while
    # a batch holds its orders (`mid_run.RequestsBeside`).
    same_run_id: bool = False

    @property
    def first_authorizations(self) -> dict[str, str]:
        """What the sandbox says of each order's authorisation at the start of the run."""
        late = {oid: "unauthorized" for oid, _ in self.payers_later}
        return {**dict(self.authorizations), **late}

    @property
    def conf(self) -> dict[str, Any]:
        return {
            "order_ids": list(self.order_ids),
            "batch_size": self.batch_size,
            "workers": self.workers,
        }

    @property
    def first_conf(self) -> dict[str, Any]:
        """The first run's: without the orders held back."""
        return {**self.conf, "order_ids": [o for o in self.order_ids if o not in self.held_back]}


def plan_run(seed: int, run: int, *, min_orders: int = 16, max_orders: int = 32) -> RunPlan:
    """The run's orders, batches, faults, bad orders and refusals, drawn from (seed, run)."""
    rng = random.Random(f"nontax-chaos:{seed}:{run}")  # noqa: S311 (a plan, not a secret)
    ids = tuple(order_id(seed, run, n) for n in range(rng.randint(min_orders, max_orders)))
    # The plan's fields as they are drawn. A new draw goes after the others, so that the draws
    # before stay as they were for a (seed, run): a run repeats across versions of the runner.
    drawn: dict[str, Any] = {"run": run, "order_ids": ids}
    kinds = rng.sample(FAULT_KINDS, rng.randint(1, 4))
    drawn["faults"] = tuple((kind, _fault_rule(kind, rng, ids)) for kind in kinds)
    positions = list(range(len(ids)))  # the orders not drawn for anything yet
    rng.shuffle(positions)
    drawn["bad"] = tuple(
        (ids[positions.pop()], rng.choice(BAD_KINDS)) for _ in range(rng.choice((0, 0, 1, 1, 2)))
    )
    # What WeChat says of a payer's authorisation from the start.
    drawn["authorizations"] = _answers(
        rng, ids, positions, (0.25, "unauthorized"), (0.2, "rejected")
    )
    drawn["batch_size"], drawn["workers"] = rng.choice((12, 20, 32)), rng.choice((4, 8))
    drawn["db_drop"] = rng.random() < 0.15
    drawn["payers_later"] = _answers(rng, ids, positions, (0.3, "authorized"), (0.2, "rejected"))
    drawn["insert_limit"] = (
        rng.randint(len(ids) // 3, len(ids) - 2) if rng.random() < 0.15 else None
    )
    requests = tuple(
        (ids[positions.pop()], kind)
        for kind in ("refuse", "void")
        if positions and rng.random() < 0.3
    )
    drawn["requests"] = requests
    if requests and rng.random() < 0.4:
        drawn["faults"] += (("request_quota", _request_quota_rule(rng, requests)),)
    first = dict(drawn["authorizations"])
    waiting = "unauthorized" in first.values() or bool(drawn["payers_later"])
    drawn["auth_quota"] = waiting and rng.random() < 0.4
    drawn["held_back"] = (
        tuple(ids[positions.pop()] for _ in range(min(4, len(positions))))
        if drawn["auth_quota"]
        else ()
    )
    drawn["refused_mid_batch"] = _late_in_batches(rng, ids, positions) if rng.random() < 0.3 else ()
    drawn["same_run_id"] = rng.random() < 0.2
    return RunPlan(**drawn)


def _answers(
    rng: random.Random, ids: Sequence[str], free: list[int], *chances: tuple[float, str]
) -> tuple[tuple[str, str], ...]:
    """(order id, answer) for each answer drawn by its chance, each to an order of `free` (the
    orders not drawn for anything yet), taken from it."""
    return tuple((ids[free.pop()], answer) for chance, answer in chances if rng.random() < chance)


def _request_quota_rule(rng: random.Random, requests: Sequence[tuple[str, str]]) -> dict:
    """The day's quota of a requested call used up: every refusal (or void) answered 45009."""
    kind = rng.choice(sorted({kind for _, kind in requests}))
    return {"endpoint": QUOTA_ENDPOINTS[kind][0], "kind": "errcode", "errcode": 45009,
            "seed": rng.randrange(2**31)}  # fmt: skip


def _late_in_batches(rng: random.Random, ids: Sequence[str], free: list[int]) -> tuple[str, ...]:
    """One or two of the orders not drawn for anything else, among the last the batches reach
    (claimed in order_id order): still unsent when the first bills arrive."""
    late = sorted(free)[-rng.randint(1, 2) :]
    return tuple(ids[n] for n in late)


def _fault_rule(kind: str, rng: random.Random, ids: Sequence[str]) -> dict[str, Any]:
    seed = rng.randrange(2**31)
    p = round
    if kind == "latency":
        return {"endpoint": rng.choice(("*", "insertbill", "setpdf")), "kind": "latency",
                "latency_ms": rng.randint(20, 300), "probability": p(rng.uniform(0.1, 0.5), 2),
                "seed": seed}  # fmt: skip
    if kind == "latency_spike":  # past the client's timeout: the call is handled afterwards
        return {"endpoint": rng.choice(("insertbill", "setpdf")), "kind": "latency",
                "latency_ms": SPIKE_MS, "count": rng.randint(1, 2), "probability": 0.2,
                "seed": seed}  # fmt: skip
    if kind == "http_5xx":
        return {"endpoint": rng.choice(("*", "insertbill", "setpdf")), "kind": "http_5xx",
                "status": rng.choice((500, 502, 503, 504)),
                "probability": p(rng.uniform(0.05, 0.2), 2), "seed": seed}  # fmt: skip
    if kind == "timeout":  # handled, then the answer is held past the client's timeout
        return {"endpoint": rng.choice(("insertbill", "setpdf")), "kind": "timeout",
                "timeout_s": HELD_ANSWER_S, "count": rng.randint(1, 3), "probability": 0.2,
                "seed": seed}  # fmt: skip
    if kind == "busy":
        return {"endpoint": "insertbill", "kind": "errcode", "errcode": -1,
                "probability": p(rng.uniform(0.05, 0.15), 2), "seed": seed}  # fmt: skip
    if kind == "busy_order":  # four -1 in a row for one order: it fails; a re-run recovers
        return {"endpoint": "insertbill", "kind": "errcode", "errcode": -1, "count": 4,
                "order_ids": [rng.choice(ids)]}  # fmt: skip
    if kind == "invoice_busy":
        return {"endpoint": "insertbill", "kind": "errcode", "errcode": 72036,
                "probability": p(rng.uniform(0.1, 0.3), 2), "seed": seed}  # fmt: skip
    if kind == "minute_quota":
        return {"endpoint": rng.choice(("insertbill", "setpdf")), "kind": "errcode",
                "errcode": 45011, "count": rng.randint(1, 2), "probability": 0.3,
                "seed": seed}  # fmt: skip
    if kind == "daily_quota":
        return {"endpoint": "insertbill", "kind": "errcode", "errcode": 45009, "count": 1,
                "probability": 0.1, "seed": seed}  # fmt: skip
    if kind == "token_expire":
        return {"endpoint": rng.choice(("insertbill", "setpdf")), "kind": "token_expire",
                "count": rng.randint(1, 2), "probability": 0.1, "seed": seed}  # fmt: skip
    if kind == "lost_answer":
        return {"endpoint": "insertbill", "kind": "lost_answer", "count": rng.randint(1, 3),
                "probability": 0.15, "seed": seed}  # fmt: skip
    raise ValueError(f"unknown fault kind {kind!r}")
