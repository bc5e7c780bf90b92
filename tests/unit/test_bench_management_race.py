"""The racing-management benchmark's judging: lost updates, double registrations, owners. No Ray, no cluster."""
from __future__ import annotations

import pytest

from loadtests.race_judging import (
    FIELDS, Answer, Round, Write, doubles_in, judge_round, lost_updates, owners, percentile, registry_counts,
    revision_mismatches,
)


def history() -> list[Write]:
    """Two owners of two fields of one name: client 0 got 200s for 1..3, client 1 for 1..2 and no answer for 3."""
    return [Write(0, "m", "batch_size", 1.0, 202), Write(1, "m", "max_batch_delay", 1.0, 202),
            Write(0, "m", "batch_size", 2.0, 202), Write(1, "m", "max_batch_delay", 2.0, 202),
            Write(0, "m", "batch_size", 3.0, 202), Write(1, "m", "max_batch_delay", 3.0, 0)]


def test_a_clean_history_has_no_lost_update():
    assert lost_updates(history(), {("m", "batch_size"): 3, ("m", "max_batch_delay"): 2.0}) == []


def test_a_field_left_at_an_older_value_is_a_lost_update():
    lost = lost_updates(history(), {("m", "batch_size"): 2, ("m", "max_batch_delay"): 2.0})
    assert [(x.name, x.field, x.last_acknowledged, x.final) for x in lost] == [("m", "batch_size", 3.0, 2)]


def test_a_field_gone_or_foreign_is_lost_and_an_unanswered_write_that_landed_is_not():
    assert lost_updates(history(), {("m", "batch_size"): 3, ("m", "max_batch_delay"): 3.0}) == []  # landed, unanswered
    assert len(lost_updates(history(), {("m", "batch_size"): None, ("m", "max_batch_delay"): 2.0})) == 1
    assert len(lost_updates(history(), {("m", "batch_size"): 7, ("m", "max_batch_delay"): 2.0})) == 1  # never sent
    assert lost_updates(history(), {}) == []  # not read (describe does not show every field): not judged


def test_a_field_with_two_writers_cannot_be_judged():
    with pytest.raises(ValueError, match="one owner"):
        lost_updates([Write(0, "m", "batch_size", 1.0, 202), Write(1, "m", "batch_size", 2.0, 202)], {})


def test_owners_give_each_field_of_each_shared_name_one_client():
    owned = owners(16, "p")
    assert len({(o.name, o.field) for o in owned}) == 16
    assert {o.field for o in owned} == set(FIELDS)
    assert len({o.name for o in owned}) == 6  # 3 fields: 16 clients share 6 names, up to 3 writers each


def test_revisions_count_the_register_and_each_acknowledged_scale():
    assert revision_mismatches(history()[:5], {"m": 6}) == {}
    assert revision_mismatches(history()[:5], {"m": 5}) == {"m": (6, 5)}


def test_a_round_without_key_wants_one_200_and_409s():
    clean = judge_round(Round("r0", None, (Answer(200), *[Answer(409)] * 15)))
    assert (clean.winners, clean.doubles, clean.problems) == (1, 0, ())
    doubled = judge_round(Round("r0", None, (Answer(200), Answer(200), *[Answer(409)] * 14)))
    assert doubled.doubles == 1 and doubled.problems
    assert judge_round(Round("r0", None, tuple([Answer(409)] * 16))).problems  # nobody won: a lost registration
    assert judge_round(Round("r0", None, (Answer(200), Answer(503), Answer(409)))).problems


def test_a_keyed_round_wants_the_same_200_for_everyone():
    same = Answer(200, '{"status": "registered"}')
    assert judge_round(Round("r1", "k", tuple([same] * 16))).problems == ()
    assert judge_round(Round("r1", "k", (same, Answer(409, "already registered")))).problems
    assert judge_round(Round("r1", "k", (Answer(503), Answer(503)))).problems


def test_the_registry_must_hold_each_raced_name_exactly_once():
    assert registry_counts(["r0", "r1"], [("r0", "1"), ("r1", "1"), ("other", "1")]) == {}
    counts = registry_counts(["r0", "r1"], [("r0", "1"), ("r0", "1")])
    assert counts == {"r0": 2, "r1": 0}
    assert doubles_in(counts) == 1


def test_percentile_is_nearest_rank():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
