"""The order in which `make bench` measures its rows, and how their samples are summed up.

On a shared machine the load moves during the benchmark: a row measured only at its start, and
another only at its end, compare the load as much as the rows. So the rows take turns, every
other round in the reverse order, and each row's best sample counts (noise only ever slows a run
down); the median is kept beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def turns(rows: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """(round, row) in the order to measure them: rows in order in even rounds, reversed in odd
    ones (A B C, C B A, A B C...), so that a load that rises or falls hits each row alike."""
    return [(r, row) for r in range(repeats) for row in (rows if r % 2 == 0 else rows[::-1])]


def summary(samples: Sequence[float], digits: int = 1) -> dict[str, float | list[float]]:
    """A row's samples: the best (the highest), the median rounded to `digits`, and all of them
    in measured order."""
    return {
        "best": max(samples),
        "median": round(statistics.median(samples), digits),
        "samples": list(samples),
    }


def most_at_once(spans: Sequence[tuple[str, float, float]]) -> dict[str, int]:
    """For (host, start, end) spans of task instances: per host, the most that ran at the same
    time (an end at the very moment of a start does not overlap it)."""
    events: dict[str, list[tuple[float, int]]] = {}
    for host, start, end in spans:
        events.setdefault(host, []).extend([(start, 1), (end, -1)])
    most = {}
    for host, points in events.items():
        running = peak = 0
        for _, step in sorted(points):  # at equal times -1 sorts before +1
            running += step
            peak = max(peak, running)
        most[host] = peak
    return dict(sorted(most.items()))
