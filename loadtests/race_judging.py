"""The racing-management benchmark's judging (``bench_management_race``), pure: no Ray, no cluster, no HTTP.

Who owns which field (:func:`owners`), which acknowledged write the registry lost (:func:`lost_updates`), whether a
record's revision counts every acknowledged scale (:func:`revision_mismatches`), how a registration round ended
(:func:`judge_round`) and how many raced names were stored more than once (:func:`registry_counts`).
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

#: scale parameter -> (its field in the stored record, its key in describe or None when describe shows another value:
#: a generic-pool model's maxQueuedRequests is the pool's, not the record's)
FIELDS: dict[str, tuple[str, Optional[str]]] = {
    "batch_size": ("batch_size", "batchSize"),
    "max_batch_delay": ("max_batch_delay_ms", "maxBatchDelay"),
    "max_queued_requests": ("max_queued_requests", None),
}

@dataclass(frozen=True)
class Owner:
    client: int
    name: str
    field: str


def owners(clients: int, prefix: str, fields: Iterable[str] = tuple(FIELDS)) -> list[Owner]:
    """Client i owns field ``i % F`` of name ``i // F``: each (name, field) has exactly one writer."""
    fields = list(fields)
    return [Owner(i, f"{prefix}-s{i // len(fields)}", fields[i % len(fields)]) for i in range(clients)]


def names_of(owned: Iterable[Owner]) -> list[str]:
    return sorted({o.name for o in owned})


@dataclass(frozen=True)
class Write:
    """One scale sent: ``value`` of ``field`` on ``name`` by ``client``; ``status`` 0 when no answer came."""
    client: int
    name: str
    field: str
    value: float
    status: int

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Lost:
    name: str
    field: str
    last_acknowledged: float
    final: Optional[float]
    where: str = "registry"


def lost_updates(writes: Iterable[Write], final: Mapping[tuple[str, str], Optional[float]],
                 where: str = "registry") -> list[Lost]:
    """The owned fields whose ``final`` value (``(name, field) -> value``; a missing key: not read, skipped) is not
    the last value its owner got a 2xx for. Values grow with each write, so the last acknowledged is the largest.
    A final value above it that the owner sent (a call whose answer was lost but whose write landed) is not a
    loss; any other value is. Raises ValueError when a (name, field) had more than one writer (then "last" has no
    meaning)."""
    by_field: dict[tuple[str, str], list[Write]] = defaultdict(list)
    for write in writes:
        by_field[(write.name, write.field)].append(write)
    lost = []
    for key, sent in sorted(by_field.items()):
        if len({w.client for w in sent}) != 1:
            raise ValueError(f"{key} was written by clients {sorted({w.client for w in sent})}: one owner each")
        acked = [w.value for w in sent if w.acknowledged]
        if not acked or key not in final:
            continue
        last, value = max(acked), final[key]
        landed_unanswered = value is not None and value > last and any(w.value == value for w in sent)
        if value is None or (value != last and not landed_unanswered):
            lost.append(Lost(key[0], key[1], last, value, where))
    return lost


def revision_mismatches(writes: Iterable[Write], revisions: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Names whose stored revision is not 1 (the register) + their acknowledged scales: name -> (expected, found).
    Only meaningful when every call was answered (an unanswered write may have landed)."""
    acked = Counter(w.name for w in writes if w.acknowledged)
    return {name: (1 + acked[name], found) for name, found in sorted(revisions.items()) if found != 1 + acked[name]}


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer (connection lost, timeout)
    body: str = ""
    replica: str = ""


@dataclass(frozen=True)
class Round:
    name: str
    key: Optional[str]  # the Idempotency-Key every client sent, or None
    answers: tuple[Answer, ...]


@dataclass(frozen=True)
class RoundVerdict:
    name: str
    winners: int   # 2xx answers
    doubles: int   # registrations beyond the first (without a key: every 2xx after one)
    problems: tuple[str, ...]


def judge_round(race: Round) -> RoundVerdict:
    """Without a key: exactly one 2xx and every other answer 409. With one key for all: every answer the same
    2xx (one registration answered to everyone; a 409 means the key was not recognised)."""
    ok = [a for a in race.answers if 200 <= a.status < 300]
    problems = []
    statuses = Counter(a.status for a in race.answers)
    if race.key is None:
        doubles = max(0, len(ok) - 1)
        if not ok:
            problems.append("nobody registered it")
        if doubles:
            problems.append(f"{len(ok)} registrations answered 2xx")
        others = {s: n for s, n in statuses.items() if not 200 <= s < 300 and s != 409}
        if others:
            problems.append(f"answers other than 2xx/409: {others}")
    else:
        doubles = 0
        distinct = sorted({(a.status, a.body[:120]) for a in race.answers})
        if len(distinct) != 1 or not ok:
            problems.append(f"one key, different answers: {dict(statuses)} {distinct}")
    return RoundVerdict(race.name, len(ok), doubles, tuple(problems))


def registry_counts(raced: Iterable[str], stored: Iterable[tuple[str, str]]) -> dict[str, int]:
    """The raced names that are not in ``stored`` (name, version pairs as listed; a repeated pair counts twice)
    exactly once: name -> how many times they are (0: the registration was lost; 2 or more: doubled)."""
    counts = Counter(name for name, _ in stored)
    return {name: counts[name] for name in sorted(set(raced)) if counts[name] != 1}


def doubles_in(counts: Mapping[str, int]) -> int:
    """Registrations beyond the first in :func:`registry_counts`' answer."""
    return sum(max(0, n - 1) for n in counts.values())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
