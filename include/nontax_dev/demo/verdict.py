"""Did the demo go as planned? The verdict on what the store and the sandbox hold in the end,
against what the demo's orders planted (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nontax_dev.demo.orders import VOIDED, DemoData, demo_order_id
from wechat_nontax.wechat.statuses import Status


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def expect(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok


def judge(
    demo: DemoData,
    load_rejected: Sequence[tuple[int, str]],
    rows: dict[str, dict[str, Any]],
    sandbox_bills: Sequence[dict[str, Any]],
    sandbox_orders: dict[str, dict[str, Any]],
    run_state: str | None,
    reimburse: dict[str, str] | None = None,
) -> Verdict:
    """Did the demo go as planned? Pure: takes what was read from the store and the sandbox
    (`reimburse`: each bill's reimburse status, when the requests were carried out)."""
    verdict = Verdict()
    voided = demo_order_id(VOIDED)
    verdict.expect(run_state is not None, "the DAG run did not happen (see the log)")
    # The load refused exactly the unloadable lines, for their reasons.
    refused = dict(load_rejected)
    for line, bad in demo.expected_rejections():
        verdict.expect(
            bad.reason_has in refused.pop(line, ""),
            f"line {line} ({bad.what}) was not refused with '{bad.reason_has}'",
        )
    for line, reason in sorted(refused.items()):
        verdict.problems.append(f"line {line} was refused unexpectedly: {reason}")
    # Every good order's bill is in the sandbox exactly once, with the code the store holds.
    bills = Counter(b["order_id"] for b in sandbox_bills)
    codes = {b["order_id"]: b.get("code") for b in sandbox_bills}
    for item in demo.good:
        oid = item.order_id
        row = rows.get(oid) or {}
        successes = (sandbox_orders.get(oid) or {}).get("successes", 0)
        want = Status.CANCELLED if oid == voided and reimburse is not None else Status.INSERTED
        verdict.expect(
            row.get("status") == want and bills[oid] == 1 and successes == 1,
            f"{oid}: status {row.get('status')!r}, {bills[oid]} bill(s) and {successes} "
            f"successful insert(s) in the sandbox (want {want}, 1 and 1)",
        )
        if want == Status.CANCELLED:
            verdict.expect(
                (reimburse or {}).get(oid) == "INVOICE_REIMBURSE_CANCEL",
                f"{oid}: voided, but its bill is {(reimburse or {}).get(oid)} in the sandbox",
            )
        if bills[oid] == 1 and row.get("code") is not None:
            verdict.expect(codes[oid] == row["code"], f"{oid}: stored code != sandbox's code")
    # Every planted problem ended where it should, with a reason a person can act on.
    for item in demo.planted:
        oid, planted = item.order_id, item.planted
        assert planted is not None
        row = rows.get(oid) or {}
        reason = row.get("reason") or ""
        ok = row.get("status") == planted.status and bool(reason.strip())
        ok = ok and planted.reason_has in reason
        if planted.errcode is not None:
            ok = ok and row.get("last_errcode") == planted.errcode
        verdict.expect(
            ok,
            f"{oid} ({planted.what}): status {row.get('status')!r}, errcode "
            f"{row.get('last_errcode')}, reason {reason!r}; want '{planted.status}'"
            + (f", errcode {planted.errcode}" if planted.errcode else "")
            + (f", reason with '{planted.reason_has}'" if planted.reason_has else ""),
        )
        verdict.expect(bills[oid] == 0, f"{oid}: has a bill in the sandbox but should not")
    extra = sorted(set(bills) - set(demo.order_ids))
    verdict.expect(not extra, f"the sandbox holds bills of unknown orders: {extra[:5]}")
    return verdict
