"""How a run's claimed orders are split into batches (one mapped task instance each)."""

from __future__ import annotations

import pytest

from wechat_nontax.issuing.run_steps import MAX_BATCHES, MIN_SPREAD_BATCH, split_batches
from wechat_nontax.issuing.task_args import batch_label


def ids(n: int) -> list[str]:
    return [f"T{i:08d}" for i in range(n)]


def sizes(batches: list[list[str]]) -> list[int]:
    return [len(batch) for batch in batches]


def test_no_orders_no_batches():
    assert split_batches([], 100, min_batches=4) == []


def test_batches_keep_the_claim_order_and_every_order_once():
    orders = ids(1234)
    batches = split_batches(orders, 100, min_batches=4)
    assert [o for batch in batches for o in batch] == orders


def test_batch_size_is_a_maximum_and_sizes_differ_by_at_most_one():
    assert sizes(split_batches(ids(25), 12)) == [9, 8, 8]
    assert sizes(split_batches(ids(10_000), 2500, min_batches=4)) == [2500] * 4
    assert sizes(split_batches(ids(10_001), 2500, min_batches=4)) == [2001] + [2000] * 4


def test_a_run_is_spread_over_the_pool_slots_when_there_are_enough_orders():
    # One batch could hold all 1,000; four let every pool slot work.
    assert sizes(split_batches(ids(1000), 2500, min_batches=4)) == [250] * 4
    # Too few orders to be worth a task instance each: fewer, larger batches.
    assert sizes(split_batches(ids(2 * MIN_SPREAD_BATCH + 1), 2500, min_batches=4)) == [101, 100]
    assert sizes(split_batches(ids(MIN_SPREAD_BATCH - 1), 2500, min_batches=4)) == [99]


def test_too_many_batches_is_refused_with_what_to_change():
    with pytest.raises(ValueError, match="raise batch_size or set max_orders"):
        split_batches(ids(MAX_BATCHES + 1), 1)


@pytest.mark.parametrize(("batch_size", "min_batches"), [(0, 1), (1, 0)])
def test_nonsense_settings_are_refused(batch_size, min_batches):
    with pytest.raises(ValueError, match="at least 1"):
        split_batches(ids(3), batch_size, min_batches=min_batches)


def test_a_batch_is_labelled_by_its_first_and_last_order_and_size():
    assert batch_label(ids(20)[5:]) == "T00000005 … T00000019 (15)"
    assert batch_label(["T1"]) == "T1 (1)"
    assert batch_label([12345]) == "12345 (1)"  # a label, never a number
    assert batch_label([]) == "empty batch"
