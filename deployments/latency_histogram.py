"""A fixed, log-spaced latency histogram: what replicas report to the status board each second.

Why a histogram and not the raw samples: a replica answering 3,000 requests a second would ship 3,000
floats a second, per model, and the board would keep 60 seconds of them for every replica; a histogram
is at most ``len(BOUNDS) + 1`` counts whatever the traffic (sparse: only the buckets hit). Histograms
also *add up*: the p99 of a model over a minute is read from the sum of every replica's histogram of
every second, whereas percentiles of percentiles mean nothing. The price is resolution: buckets grow
by 2^(1/4), so a percentile is known to within one bucket (about 19% of the value), which is plenty
for a page that shows milliseconds with one decimal.

Pure (no Ray): counted on the replicas' metrics thread, summed and read on the board.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Mapping, Optional

#: The smallest upper bound, in ms: a request answered in 50 us or less lands in bucket 0.
FIRST_BOUND_MS = 0.05
GROWTH = 2 ** 0.25
#: Upper bounds of the buckets, in ms: 0.05 ms .. ~105 s; bucket ``len(BOUNDS)`` holds anything slower.
BOUNDS: tuple[float, ...] = tuple(FIRST_BOUND_MS * GROWTH ** i for i in range(85))

Histogram = dict[int, int]  # bucket index -> count; only buckets that were hit


def bucket_of(latency_ms: float) -> int:
    """The bucket a latency falls in: the first whose upper bound is >= it."""
    return bisect_left(BOUNDS, latency_ms)


def histogram(latencies_ms: Iterable[float]) -> Histogram:
    """Count latencies into buckets."""
    counts: Histogram = {}
    for value in latencies_ms:
        index = bisect_left(BOUNDS, value)
        counts[index] = counts.get(index, 0) + 1
    return counts


def add(total: Histogram, more: Mapping[int, int]) -> Histogram:
    """Add ``more`` into ``total`` (in place) and return it."""
    for index, count in more.items():
        total[index] = total.get(index, 0) + count
    return total


def quantile(counts: Mapping[int, int], q: float) -> Optional[float]:
    """The ``q`` quantile (0 < q <= 1) in ms, interpolated linearly inside its bucket; None without samples.

    A quantile in the overflow bucket (slower than the last bound) is reported as the last bound.
    """
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(counts):
        count = counts[index]
        if count <= 0:
            continue
        if seen + count >= rank:
            if index >= len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[index - 1] if index > 0 else 0.0
            upper = BOUNDS[index]
            return lower + (upper - lower) * max(0.0, rank - seen) / count
        seen += count
    return BOUNDS[-1]  # not reached: the last bucket always covers the rank
