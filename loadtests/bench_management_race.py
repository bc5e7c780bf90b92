"""Racing management calls (issue 18): clients over 2 management replicas register and scale the same names.

    python -m loadtests.bench_management_race [--seconds 120] [--clients 16] [--round-every 10]
                                              [--out results/bench_management_race.md]

Target: "16 clients over 2 management replicas register and scale the same names for 2 minutes, with zero lost
updates and zero double registrations, checked against the registry afterwards."

A throwaway cluster (``loadtests.local_cluster.bench_cluster``) with ``--management-replicas 2``; cheap enough for
2 cores: every model is registered with ``initial_workers=0`` (served by the generic pool, no replicas of its own)
and scales change only fields that move no replica count (``race_judging.FIELDS``). Every call goes on a connection of its
own, so Serve spreads them over both replicas (each answer names its replica in ``x-modelpool-replica``).

* **Scales (lost updates).** Each client owns one field of one shared name (:func:`owners`: 3 fields, so 16
  clients share 6 names, up to 3 writers per record at once) and PUTs it with its own growing sequence. Afterwards
  each owned field is read from the registry store itself and through describe on both replicas; a field whose
  value is not the last one its owner got a 2xx for is a lost update (:func:`lost_updates`). Each record's
  revision is also compared with 1 + the scales acknowledged on it (every acknowledged scale is one CAS write).
* **Registration rounds (doubles).** Every ``--round-every`` seconds all clients meet at a barrier and POST the same
  new name at once: exactly one 200 and the rest 409; every other round all send one ``Idempotency-Key``, and then
  every client gets the same 200 (:func:`judge_round`). Afterwards each raced name must be in the registry exactly
  once (:func:`registry_counts`), in the store and through ``GET /models/{name}/all``.

Any 5xx (or a lost connection) is a failure. The registry writer's CAS conflicts are not counted by modelpool (no
metric, no log line), so they cannot be printed; the management replicas' logs are scanned for lease losses and
"changed N times" 503s instead.
"""
from __future__ import annotations

import argparse
import glob
import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import requests

from loadtests.local_cluster import bench_cluster
from loadtests.race_judging import (FIELDS, Answer, Lost, Owner, Round, RoundVerdict, Write, doubles_in, judge_round,
                                    lost_updates, names_of, owners, percentile, registry_counts, revision_mismatches)
from loadtests.report import publish

ARCHIVE = "iris-1.zip"  # an archive in the cluster's model store (`url` is a store name, or an allowed http/s3 URL)
VERSION = "1"           # the archive manifest's version: every name here is registered at it
REPLICA_HEADER = "x-modelpool-replica"  # modelpool.deployments.app_names.REPLICA_HEADER (not imported: no Ray here)
CALL_TIMEOUT_S = 180.0  # past the Serve lease's 120 s wait: a call that waits that long is answered 503, not cut
BARRIER_TIMEOUT_S = 300.0


# ------------------------------------------------------------------------------------------ running
@dataclass
class Call:
    kind: str
    status: int
    replica: str
    seconds: float


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    rounds: dict[int, list[Answer]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, kind: str, method: str, url: str, headers: dict, params: dict) -> tuple[Answer, float]:
        """One call on a connection of its own (Serve picks a replica per request; a fresh one each time)."""
        started = time.perf_counter()
        try:
            answer = requests.request(method, url, headers=headers, params=params, timeout=CALL_TIMEOUT_S)
            result = Answer(answer.status_code, answer.text, answer.headers.get(REPLICA_HEADER, ""))
        except requests.RequestException as exc:
            result = Answer(0, f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - started
        with self.lock:
            self.calls.append(Call(kind, result.status, result.replica, seconds))
            if result.status == 0 or result.status >= 500:
                self.failures.append(f"{kind} {method} {url} {params}: {result.status} {result.body[:200]}")
        return result, seconds


@dataclass(frozen=True)
class Plan:
    url: str
    token: str
    prefix: str
    owned: list[Owner]
    seconds: float
    round_every: float

    @property
    def rounds(self) -> int:
        return max(1, int(self.seconds / self.round_every))

    def round_name(self, r: int) -> str:
        return f"{self.prefix}-r{r}"

    def round_key(self, r: int) -> Optional[str]:
        return f"{self.prefix}-key-{r}" if r % 2 else None


def client_loop(plan: Plan, me: Owner, barrier: threading.Barrier, rec: Recorder, started: float) -> None:
    """Scale my field until the end; join every registration round when its time comes (all of them, even late,
    so the barrier never waits for a client that left)."""
    auth = {"Authorization": f"Bearer {plan.token}"}
    sequence, done = 0, 0
    while True:
        elapsed = time.monotonic() - started
        due = min(plan.rounds, int(elapsed / plan.round_every + 0.5))  # round r at (r + 0.5) * round_every
        if done < due:
            r, done = done, done + 1
            try:
                barrier.wait(BARRIER_TIMEOUT_S)
            except threading.BrokenBarrierError:
                with rec.lock:
                    rec.failures.append(f"client {me.client}: round {r}'s barrier broke")
                continue
            key = plan.round_key(r)
            headers = {**auth, **({"Idempotency-Key": key} if key else {})}
            answer, _ = rec.call("register (keyed race)" if key else "register (race)", "POST", f"{plan.url}/models",
                                 headers, {"url": ARCHIVE, "model_name": plan.round_name(r), "initial_workers": 0})
            with rec.lock:
                rec.rounds[r].append(answer)
            continue
        if elapsed >= plan.seconds:
            if done >= plan.rounds:
                return
            time.sleep(0.05)
            continue
        sequence += 1
        answer, _ = rec.call("scale", "PUT", f"{plan.url}/models/{me.name}/{VERSION}", auth, {me.field: sequence})
        with rec.lock:
            rec.writes.append(Write(me.client, me.name, me.field, float(sequence), answer.status))


def setup(plan: Plan, rec: Recorder) -> None:
    auth = {"Authorization": f"Bearer {plan.token}"}
    for name in names_of(plan.owned):
        answer, _ = rec.call("register (setup)", "POST", f"{plan.url}/models", auth,
                             {"url": ARCHIVE, "model_name": name, "initial_workers": 0})
        if answer.status != 200:
            raise SystemExit(f"could not register {name}: {answer.status} {answer.body}")


def replicas_answering(plan: Plan, rec: Recorder, calls: int = 40) -> Counter:
    auth = {"Authorization": f"Bearer {plan.token}"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: rec.call("list", "GET", f"{plan.url}/models", auth, {"limit": 1})[0],
                                range(calls)))
    return Counter(a.replica for a in answers if a.status == 200)


def describe_everywhere(plan: Plan, rec: Recorder, name: str, path_version: str, tries: int = 12) -> dict[str, list]:
    """Describe ``name`` until both replicas answered (or ``tries``): replica -> its answer (a list of versions)."""
    auth = {"Authorization": f"Bearer {plan.token}"}
    seen: dict[str, list] = {}
    for _ in range(tries):
        answer, _ = rec.call("describe", "GET", f"{plan.url}/models/{name}/{path_version}", auth, {})
        if answer.status == 200:
            seen.setdefault(answer.replica, json.loads(answer.body))
        elif answer.status == 404:
            seen.setdefault(answer.replica, [])
        if len(seen) >= 2:
            break
    return seen


def management_log_lines(patterns: tuple[str, ...]) -> Counter:
    """Lines of this Ray session's management replica logs that contain each pattern (Ray keeps them in its temp
    dir; the session is ours while the bench runs, under the Ray lock)."""
    found: Counter = Counter()
    for path in glob.glob("/tmp/ray/session_latest/logs/serve/replica_management_*.log"):
        try:
            with open(path, errors="replace") as log:
                for line in log:
                    for pattern in patterns:
                        if pattern in line:
                            found[pattern] += 1
        except OSError:
            pass
    return found


@dataclass
class Outcome:
    plan: Plan
    rec: Recorder
    wall_s: float
    replicas_before: Counter
    lost: list[Lost]
    revisions: dict[str, tuple[int, int]]
    verdicts: list[RoundVerdict]
    registry: dict[str, dict[str, int]]  # where -> raced name -> times found, when not exactly once
    problems: list[str]  # stale reads between replicas, a keyed round's record without its key
    logs: Counter


def judge(plan: Plan, rec: Recorder, registry) -> tuple[list[Lost], dict, list[RoundVerdict], list[str], list[str]]:
    """Read the registry (store and describe on both replicas) and judge the run."""
    final_store: dict[tuple[str, str], Optional[float]] = {}
    revisions: dict[str, int] = {}
    final_described: dict[tuple[str, str], Optional[float]] = {}
    stale: list[str] = []
    for name in names_of(plan.owned):
        stored = registry.read_raw(registry.key_of("models", name, VERSION)) or {}
        revisions[name] = int(stored.get("revision", 0))
        for param, (record_field, _) in FIELDS.items():
            final_store[(name, param)] = stored.get(record_field)
        described = describe_everywhere(plan, rec, name, VERSION)
        if len(described) < 2:
            stale.append(f"{name}: described by {len(described)} replica(s) only")
        for replica, versions in sorted(described.items()):
            for param, (_, describe_key) in FIELDS.items():
                if describe_key is None:
                    continue
                value = versions[0].get(describe_key) if versions else None
                previous = final_described.setdefault((name, param), value)
                if previous != value:
                    stale.append(f"{name}.{param}: {previous} on one replica, {value} on {replica}")
    lost = lost_updates(rec.writes, final_store, "registry store")
    lost += lost_updates(rec.writes, final_described, "describe")
    unanswered = any(not w.acknowledged for w in rec.writes)
    revision_problems = {} if unanswered else revision_mismatches(rec.writes, revisions)

    verdicts = [judge_round(Round(plan.round_name(r), plan.round_key(r), tuple(rec.rounds.get(r, ()))))
                for r in range(plan.rounds)]
    raced = [plan.round_name(r) for r in range(plan.rounds)]
    # where -> name -> times found, for the raced names not found exactly once
    counts = {"registry store": registry_counts(raced, [(r.name, r.version) for r in registry.list_models()])}
    listed = []
    for name in raced:
        for versions in describe_everywhere(plan, rec, name, "all", tries=1).values():
            listed += [(v["modelName"], v["modelVersion"]) for v in versions]
    counts["describe /all"] = registry_counts(raced, listed)
    keys = []
    for r, name in enumerate(raced):
        key = plan.round_key(r)
        stored = (registry.read_raw(registry.key_of("models", name, VERSION)) or {}) if key else {}
        if key and stored.get("idempotency_key") != key:
            keys.append(f"{name}: stored with key {stored.get('idempotency_key')!r}, raced with {key!r}")
    return lost, revision_problems, verdicts, counts, keys + stale


def run(url: str, token: str, home, clients: int, seconds: float, round_every: float) -> Outcome:
    from modelpool.cluster.object_store import ObjectStore
    from modelpool.cluster.paths import objects_dir
    from modelpool.management.registry import Registry

    prefix = f"race{uuid.uuid4().hex[:4]}"
    plan = Plan(url, token, prefix, owners(clients, prefix), seconds, round_every)
    rec = Recorder()
    replicas_before = replicas_answering(plan, rec)
    print(f"management replicas answering before the run: {dict(replicas_before)}", flush=True)
    setup(plan, rec)
    rec.calls.clear()  # the figures are the race's; the set-up's calls are not counted
    barrier = threading.Barrier(clients)
    print(f"{clients} clients for {seconds:.0f}s: {len(names_of(plan.owned))} shared names x {len(FIELDS)} fields, "
          f"{plan.rounds} registration rounds", flush=True)
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_loop, plan, owner, barrier, rec, started) for owner in plan.owned]:
            future.result()
    wall_s = time.monotonic() - started
    rec_calls = len(rec.calls)
    lost, revisions, verdicts, counts, problems = judge(plan, rec, Registry(ObjectStore(str(objects_dir(home)))))
    del rec.calls[rec_calls:]  # the judging's describes are not the race's calls either
    logs = management_log_lines(("lost the 'serve' lease", "times while this change was being written",
                                 "did not answer for", "Traceback"))
    return Outcome(plan, rec, wall_s, replicas_before, lost, revisions, verdicts, counts, problems, logs)


# ------------------------------------------------------------------------------------------ report
def report(o: Outcome, clients: int) -> str:
    calls = o.rec.calls
    kinds = sorted({c.kind for c in calls})
    statuses = sorted({c.status for c in calls})
    replicas = sorted({c.replica for c in calls})
    five = [c for c in calls if c.status == 0 or c.status >= 500]
    doubles = sum(v.doubles for v in o.verdicts) + max((doubles_in(c) for c in o.registry.values()), default=0)
    off = {name for c in o.registry.values() for name in c}
    keyed = [v for r, v in enumerate(o.verdicts) if o.plan.round_key(r)]
    unkeyed = [v for r, v in enumerate(o.verdicts) if not o.plan.round_key(r)]
    keyed_bad, unkeyed_bad = [v for v in keyed if v.problems], [v for v in unkeyed if v.problems]
    round_problems = [f"{v.name}: {p}" for v in o.verdicts for p in v.problems]
    latency = {k: [c.seconds for c in calls if c.kind == k and 200 <= c.status < 300] for k in kinds}
    lines = [
        f"{clients} clients over {len(replicas)} management replicas for {o.wall_s:.0f} s "
        f"({o.plan.seconds:.0f} s of scales, then the last rounds), iris-1.zip registered with initial_workers=0, "
        f"{len(names_of(o.plan.owned))} shared names x {len(FIELDS)} owned fields ({', '.join(FIELDS)}), "
        f"{o.plan.rounds} registration rounds (every other with one Idempotency-Key for all)",
        "",
        "| call | calls | " + " | ".join(str(s or "no answer") for s in statuses) + " | p50 | p99 |",
        "| --- | ---: | " + " | ".join("---:" for _ in statuses) + " | ---: | ---: |",
    ]
    for kind in kinds:
        of = [c for c in calls if c.kind == kind]
        by = Counter(c.status for c in of)
        lines.append(f"| {kind} | {len(of)} | " + " | ".join(str(by.get(s, 0)) for s in statuses)
                     + f" | {percentile(latency[kind], 50):.2f} s | {percentile(latency[kind], 99):.2f} s |")
    lines += ["", "| management replica | calls answered |", "| --- | ---: |"]
    for replica in replicas:
        lines.append(f"| {replica or '(no header / no answer)'} | {sum(1 for c in calls if c.replica == replica)} |")
    acked = sum(1 for w in o.rec.writes if w.acknowledged)
    lines += ["", f"Scales acknowledged: {acked} of {len(o.rec.writes)}; owned fields checked: "
                  f"{len({(w.name, w.field) for w in o.rec.writes})} in the registry store, "
                  f"{len({(w.name, w.field) for w in o.rec.writes if FIELDS[w.field][1]})} through describe on each "
                  "replica.",
              f"Revisions (1 + acknowledged scales per name): "
              + ("all match" if not o.revisions else f"mismatches {o.revisions}"),
              f"Registration rounds: {sum(1 for v in o.verdicts if v.winners)} of {len(o.verdicts)} won; "
              f"round problems: {round_problems or 'none'}; raced names not exactly once: "
              + (str({w: c for w, c in o.registry.items() if c}) if off else "none (registry store, describe /all)") + ".",
              "Other problems (stale reads between replicas, keys): " + ("; ".join(o.problems) or "none") + ".",
              "CAS retries: not counted by modelpool (no metric or log line); management log lines: "
              + (", ".join(f"{k!r}: {v}" for k, v in o.logs.items()) if o.logs else "no lease loss, no CAS 503, "
                 "no writer timeout, no traceback") + "."]
    if o.lost:
        lines.append("Lost updates: " + "; ".join(f"{x.name}.{x.field} ({x.where}): last acknowledged "
                                                   f"{x.last_acknowledged:g}, found {x.final}" for x in o.lost))
    if o.rec.failures:
        lines.append("Failures: " + "; ".join(o.rec.failures[:10]) + (" ..." if len(o.rec.failures) > 10 else ""))
    both = len([r for r in replicas if r]) >= 2 and len(o.replicas_before) >= 2
    lines += ["", "| target | goal | measured | met |", "| --- | --- | --- | --- |",
              f"| management replicas answering | 2 | {len([r for r in replicas if r])} | {'yes' if both else 'NO'} |",
              f"| lost updates | 0 | {len(o.lost)} | {'yes' if not o.lost else 'NO'} |",
              f"| double registrations | 0 | {doubles} | {'yes' if not doubles else 'NO'} |",
              f"| raced names in the registry exactly once | all {len(o.verdicts)} | "
              f"{len(o.verdicts) - len(off)} | {'yes' if not off else 'NO'} |",
              f"| one Idempotency-Key: the same 200 for every racer | all {len(keyed)} keyed rounds | "
              f"{len(keyed) - len(keyed_bad)} | {'yes' if not keyed_bad else 'NO'} |",
              f"| unkeyed rounds: one 200, the rest 409 | all {len(unkeyed)} | {len(unkeyed) - len(unkeyed_bad)} | "
              f"{'yes' if not unkeyed_bad else 'NO'} |",
              f"| 5xx or no answer | 0 | {len(five)} | {'yes' if not five else 'NO'} |"]
    return "\n".join(lines)


def met(o: Outcome) -> bool:
    return (not o.lost and not any(o.registry.values()) and not any(v.problems for v in o.verdicts)
            and not o.problems and not o.rec.failures and not o.revisions and len({c.replica for c in o.rec.calls if c.replica}) >= 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--round-every", type=float, default=10.0, help="seconds between registration rounds")
    parser.add_argument("--out", default="results/bench_management_race.md")
    args = parser.parse_args()
    with bench_cluster({"MODELPOOL_MANAGEMENT_REPLICAS": "2"}) as cluster:
        outcome = run(cluster.url, cluster.token, cluster.home, args.clients, args.seconds, args.round_every)
    publish(report(outcome, args.clients), args.out)
    raise SystemExit(0 if met(outcome) else 1)


if __name__ == "__main__":
    main()
