"""Fault rules: make chosen calls slow, fail, hang, lose their answer or find their token expired.

A rule (POST /_sandbox/faults) is a JSON object:

    endpoint     "insertbill" | "setpdf" | "getpdf" | "stable_token" | "token" | "getauthdata" |
                 "rejectinsert" | "updatestatus" | "*"
    kind         "latency" | "http_5xx" | "errcode" | "timeout" | "lost_answer" | "token_expire"
    errcode      kind errcode: the errcode answered (default -1), errmsg optional
    latency_ms   extra delay before handling (default 50 for kind latency, 0 for the others)
    status       kind http_5xx: the HTTP status (500..599, default 503), body not JSON
    timeout_s    kind timeout: the call is handled, then its answer is held this long (default 30)
    count        apply to the next N matching calls, then the rule is spent (null: unlimited)
    probability  0..1 (default 1): chance that a matching call is hit
    seed         int: the rule draws from its own random.Random(seed), so runs are reproducible
    order_ids    list of order ids: only calls naming one of them (insertbill, getauthdata,
                 rejectinsert; updatestatus through the order whose bill has that code)

Rules are looked at in the order they were added. Delays add up; the first hit http_5xx or
errcode rule decides the answer (later ones of those kinds are not consulted and not consumed);
token_expire expires every token right before the call is handled; lost_answer handles the call
normally and then drops the connection after the status line and headers.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

FAULT_ENDPOINTS = frozenset(
    {
        "insertbill",
        "setpdf",
        "getpdf",
        "stable_token",
        "token",
        "getauthdata",
        "rejectinsert",
        "updatestatus",
        "getticket",
        "getbillauthurl",
        "*",
    }
)
FAULT_KINDS = frozenset(
    {"latency", "http_5xx", "errcode", "timeout", "lost_answer", "token_expire"}
)
ANSWERING_KINDS = frozenset({"http_5xx", "errcode"})
RULE_KEYS = frozenset(
    {
        "endpoint",
        "kind",
        "errcode",
        "errmsg",
        "latency_ms",
        "status",
        "timeout_s",
        "count",
        "probability",
        "seed",
        "order_ids",
    }
)


class FaultRuleError(ValueError):
    """A fault rule is malformed."""


@dataclass
class FaultRule:
    id: int
    endpoint: str
    kind: str
    errcode: int | None = None
    errmsg: str | None = None
    latency_ms: float = 0.0
    status: int = 503
    timeout_s: float = 30.0
    count: int | None = None
    probability: float = 1.0
    seed: int | None = None
    order_ids: frozenset[str] | None = None
    remaining: int | None = None
    seen: int = 0  # matching calls looked at (a probability draw each)
    hits: int = 0
    created_at: float = field(default_factory=time.time)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    @property
    def spent(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "kind": self.kind,
            "errcode": self.errcode,
            "errmsg": self.errmsg,
            "latency_ms": self.latency_ms,
            "status": self.status,
            "timeout_s": self.timeout_s,
            "count": self.count,
            "remaining": self.remaining,
            "probability": self.probability,
            "seed": self.seed,
            "order_ids": sorted(self.order_ids) if self.order_ids is not None else None,
            "seen": self.seen,
            "hits": self.hits,
            "spent": self.spent,
            "created_at": self.created_at,
        }


def _number(spec: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = spec.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise FaultRuleError(f"{key} must be a number in [{low}, {high}]")
    return float(value)


def _integer(spec: dict[str, Any], key: str) -> int | None:
    value = spec.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise FaultRuleError(f"{key} must be an integer")
    return value


def parse_rule(spec: Any, rule_id: int) -> FaultRule:
    """Validate a rule's JSON; raises FaultRuleError with a readable reason."""
    if not isinstance(spec, dict):
        raise FaultRuleError("a fault rule is a JSON object")
    unknown = set(spec) - RULE_KEYS
    if unknown:
        raise FaultRuleError(f"unknown field(s): {', '.join(sorted(unknown))}")
    endpoint = spec.get("endpoint", "*")
    if endpoint not in FAULT_ENDPOINTS:
        raise FaultRuleError(f"endpoint must be one of {', '.join(sorted(FAULT_ENDPOINTS))}")
    kind = spec.get("kind")
    if kind not in FAULT_KINDS:
        raise FaultRuleError(f"kind must be one of {', '.join(sorted(FAULT_KINDS))}")
    errcode = _integer(spec, "errcode")
    if kind == "errcode" and errcode is None:
        errcode = -1
    errmsg = spec.get("errmsg")
    if errmsg is not None and not isinstance(errmsg, str):
        raise FaultRuleError("errmsg must be a string")
    status = _integer(spec, "status")
    status = 503 if status is None else status
    if not 500 <= status <= 599:
        raise FaultRuleError("status must be in 500..599")
    count = _integer(spec, "count")
    if count is not None and count < 1:
        raise FaultRuleError("count must be >= 1 (or null for unlimited)")
    seed = _integer(spec, "seed")
    order_ids = spec.get("order_ids")
    if order_ids is not None:
        if not isinstance(order_ids, list) or not all(isinstance(o, str) for o in order_ids):
            raise FaultRuleError("order_ids must be a list of strings")
        order_ids = frozenset(order_ids)
    return FaultRule(
        id=rule_id,
        endpoint=endpoint,
        kind=kind,
        errcode=errcode,
        errmsg=errmsg,
        latency_ms=_number(spec, "latency_ms", 50.0 if kind == "latency" else 0.0, 0, 600_000),
        status=status,
        timeout_s=_number(spec, "timeout_s", 30.0, 0, 3600),
        count=count,
        probability=_number(spec, "probability", 1.0, 0, 1),
        seed=seed,
        order_ids=order_ids,
        remaining=count,
        rng=random.Random(seed) if seed is not None else random.Random(),
    )


@dataclass
class FaultPlan:
    """What the hit rules do to one call."""

    latency_s: float = 0.0
    token_expire: bool = False
    hold_s: float = 0.0
    lost: bool = False
    answer: FaultRule | None = None  # the http_5xx / errcode rule that answers instead
    rule_ids: list[int] = field(default_factory=list)


class FaultSet:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1

    def add(self, spec: Any) -> FaultRule:
        with self._lock:
            rule = parse_rule(spec, self._next_id)
            self._next_id += 1
            self._rules.append(rule)
            return rule

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if r.id != rule_id]
            return len(self._rules) != before

    def clear(self) -> int:
        with self._lock:
            removed = len(self._rules)
            self._rules = []
            return removed

    def reset(self) -> None:
        with self._lock:
            self._rules = []
            self._next_id = 1

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_dict() for r in self._rules]

    def active(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_dict() for r in self._rules if not r.spent]

    def match(self, endpoint: str, order_id: str | None) -> FaultPlan | None:
        """Consume the rules that hit this call; None when nothing hits (the fast path)."""
        if not self._rules:
            return None
        plan: FaultPlan | None = None
        with self._lock:
            for rule in self._rules:
                if rule.spent or (rule.endpoint != "*" and rule.endpoint != endpoint):
                    continue
                if rule.order_ids is not None and order_id not in rule.order_ids:
                    continue
                if rule.kind in ANSWERING_KINDS and plan is not None and plan.answer is not None:
                    continue
                rule.seen += 1
                if rule.probability < 1.0 and rule.rng.random() >= rule.probability:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                rule.hits += 1
                if plan is None:
                    plan = FaultPlan()
                plan.rule_ids.append(rule.id)
                plan.latency_s += rule.latency_ms / 1000.0
                if rule.kind == "token_expire":
                    plan.token_expire = True
                elif rule.kind == "timeout":
                    plan.hold_s += rule.timeout_s
                elif rule.kind == "lost_answer":
                    plan.lost = True
                elif rule.kind in ANSWERING_KINDS:
                    plan.answer = rule
        return plan
