"""The soak run's chaos schedule: a pure function of the run's length (loadtests/soak_schedule.py)."""
from __future__ import annotations

import pytest

from loadtests.soak_schedule import (BATCH, KILL_MANAGEMENT, KILL_REPLICA, KILL_ROTATION, SCALE_DOWN, SCALE_UP,
                                     events, management_kill_time, parse_duration, plan_for)


@pytest.mark.parametrize("text, seconds", [("60s", 60), ("10m", 600), ("1h", 3600), ("90", 90), ("1.5m", 90),
                                           (" 2 min ", 120)])
def test_durations_are_read_with_their_unit(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "5s", "-1m", "10d"])
def test_a_duration_that_is_not_one_or_too_short_is_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def at(kind, evs):
    return [e.at_s for e in evs if e.kind == kind]


def test_the_full_run_follows_the_issue():
    plan = plan_for(600)
    evs = events(plan)
    assert plan.warmup_s == 120 and plan.bucket_s == 60 and plan.sample_every_s == 10
    scales = [(e.at_s, e.kind) for e in evs if e.kind in (SCALE_UP, SCALE_DOWN)]
    assert [t for t, _ in scales] == [30.0 * k for k in range(1, 19)]  # every 30 s up to the quiet tail
    assert [k for _, k in scales] == [SCALE_UP, SCALE_DOWN] * 9
    assert at(BATCH, evs) == [60.0 * k for k in range(1, 10)]
    kills = [e for e in evs if e.kind == KILL_REPLICA]
    assert [k.at_s for k in kills] == [135.0, 255.0, 375.0, 495.0]  # every 2 minutes, off the scale events
    assert [k.target for k in kills] == list(KILL_ROTATION)
    assert at(KILL_MANAGEMENT, evs) == [307.5]


@pytest.mark.parametrize("duration", [20, 60, 90, 120, 300, 600, 1800, 3600])
def test_every_run_keeps_the_rules_that_make_it_readable(duration):
    plan = plan_for(duration)
    evs = events(plan)
    assert evs == sorted(evs, key=lambda e: e.at_s)
    assert all(0 < e.at_s <= plan.duration_s - plan.quiet_tail_s for e in evs), "an event in the quiet tail"
    assert plan.quiet_tail_s >= max(plan.grace_s, 3 * plan.sample_every_s)
    scales = [e.kind for e in evs if e.kind in (SCALE_UP, SCALE_DOWN)]
    assert scales.count(SCALE_UP) == scales.count(SCALE_DOWN) and (not scales or scales[-1] == SCALE_DOWN)
    assert all(a != b for a, b in zip(scales, scales[1:])), "up and down alternate"
    kills = at(KILL_REPLICA, evs)
    scale_times = at(SCALE_UP, evs) + at(SCALE_DOWN, evs)
    assert not set(kills) & set(scale_times), "a replica kill on a scale event"
    for moment in at(KILL_MANAGEMENT, evs):
        assert moment >= plan.warmup_s
        assert all(abs(moment - k) >= plan.grace_s for k in kills)
        assert all(abs(moment - s) >= plan.scale_every_s / 4 for s in scale_times + at(BATCH, evs))
    assert plan.warmup_s == min(120, 0.2 * duration)


def test_a_minute_keeps_the_shape_scaled_down():
    plan = plan_for(60)
    evs = events(plan)
    assert (plan.warmup_s, plan.sample_every_s, plan.bucket_s, plan.quiet_tail_s) == (12, 5, 10, 15)
    assert [(e.at_s, e.kind) for e in evs if e.kind in (SCALE_UP, SCALE_DOWN)] == [(15, SCALE_UP), (30, SCALE_DOWN)]
    assert at(BATCH, evs) == [20, 40]
    assert [(e.at_s, e.target) for e in evs if e.kind == KILL_REPLICA] == [(27.5, "model:iris:1")]


def test_the_management_kill_can_be_left_out():
    plan = plan_for(600, management_kill=False)
    assert management_kill_time(plan) is None
    assert not at(KILL_MANAGEMENT, events(plan))
    assert len(at(KILL_REPLICA, events(plan))) == 4


def test_no_time_fits_the_management_kill_then_none_is_made():
    plan = plan_for(60, grace_s=30)  # every moment after the warm-up is within a grace window of the replica kill
    assert management_kill_time(plan) is None
    assert not at(KILL_MANAGEMENT, events(plan))


def test_the_schedule_is_the_same_every_time():
    assert events(plan_for(600)) == events(plan_for(600))
