"""A SPLIT router's choice: proportions hold, a routing key always lands on the same child."""
from __future__ import annotations

import collections
import random
import subprocess
import sys

import pytest

from modelpool.deployments.traffic import Split, key_point


def test_a_90_10_canary_holds_within_3_points_over_2000_requests() -> None:
    split = Split([90, 10])
    draw = random.Random(11).random
    counts = collections.Counter(split.pick(draw=draw) for _ in range(2000))
    assert abs(counts[1] / 2000 - 0.10) <= 0.03 and counts[0] + counts[1] == 2000


def test_keys_spread_by_weight_and_each_key_sticks() -> None:
    split = Split([1, 1, 2])
    keys = [f"user-{n}" for n in range(4000)]
    first = [split.pick(key) for key in keys]
    assert first == [split.pick(key) for key in keys], "the same key, the same child"
    shares = collections.Counter(first)
    assert abs(shares[2] / 4000 - 0.5) <= 0.03 and abs(shares[0] / 4000 - 0.25) <= 0.03


def test_the_point_of_a_key_is_the_same_in_another_process() -> None:
    """Graph replicas are separate processes: Python's hash() would differ there, BLAKE2b does not."""
    code = "from modelpool.deployments.traffic import key_point; print(repr(key_point('session-42')))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123"}).stdout.strip()
    assert float(other) == key_point("session-42") and 0 <= key_point("session-42") < 1


def test_zero_weights_are_never_picked_and_bad_weights_refused() -> None:
    split = Split([0, 5, 0])
    assert {split.pick(draw=lambda: point) for point in (0.0, 0.3, 0.999999)} == {1}
    assert Split([1, 0]).pick(draw=lambda: 0.999) == 0
    for weights in ([0, 0], [1, -1], []):
        with pytest.raises(ValueError):
            Split(weights)


def test_moving_weight_moves_only_the_keys_that_cross() -> None:
    keys = [f"k{n}" for n in range(2000)]
    before = [Split([90, 10]).pick(key) for key in keys]
    after = [Split([80, 20]).pick(key) for key in keys]
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert all(pair == (0, 1) for pair in moved), "no key goes from the canary back to the primary"
    assert abs(len(moved) / 2000 - 0.10) <= 0.03
