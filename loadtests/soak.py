"""The soak run (issue 18): steady mixed load and scheduled chaos for a long while, then leaks and failures judged.

Usage (``make soak``)::

    python -m loadtests.soak [--duration 10m] [--clients 8] [--rate 10] [--out results/DIR]
    python -m loadtests.soak --home ~/.modelpool [--url http://127.0.0.1:8000] [--grpc 127.0.0.1:8001]

Without ``--url``/``--home`` it starts a throwaway cluster (``loadtests.local_cluster.bench_cluster``: the example
models, ``make start``'s settings, free loopback ports) and stops it at the end. With them it runs against that
cluster (loopback only), finding its token, Ray session and object store from the home; it leaves iris v1 scaled
as it found it.

While ``--clients`` threads send inference at ``--rate`` requests per second each (``loadtests.soak_load``), the
schedule of ``loadtests.soak_schedule`` scales iris v1 up and down, runs a batch job of ``iris_report``, kills a
model replica with SIGKILL and kills the management replica once (``--no-management-kill``: not), and a sampler
reads RSS and open file descriptors of every process of the cluster (``loadtests.soak_procs``). At the end the
object store is checked for what the finished jobs left (``loadtests.soak_objects``) and the figures are judged
(``loadtests.soak_report``): ``soak.md`` and ``soak.json`` (the per-bucket series) in the results folder, the
verdicts printed, exit status 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from loadtests import soak_markdown, soak_objects, soak_procs
from loadtests.run_load_test import require_loopback
from loadtests.soak_load import IRIS, InferenceClient, Management, Recorder
from loadtests.soak_report import Kill, SoakReport, build
from loadtests.soak_schedule import (BATCH, KILL_MANAGEMENT, KILL_REPLICA, SCALE_DOWN, SCALE_UP, ChaosPlan, Event,
                                     events, parse_duration, plan_for)
from modelpool.deployments.app_names import app_name

SCALED = ("iris", "1")               # the model version scaled up and down
BATCH_SERVICE = ("iris_report", "1")  # writes an artifact per row: the most keys a job leaves
RECOVERY_S = 120.0                   # how long a kill's replacement, or the end's clean-up, is waited for
OBJECTS_SETTLE_S = 15.0              # leases are released just after a job's final state is written


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    ray_port: int
    grpc_target: str = ""
    objects_dir: Optional[str] = None   # the object store (a local directory is checked for leftovers)
    cache_dir: Optional[Path] = None    # the cluster's cache (batch scoring's local temp directories)


def target_from_home(home: Path, url: Optional[str] = None, grpc_target: str = "", token: Optional[str] = None,
                     objects_dir: Optional[str] = None) -> Target:
    """A running cluster as ``modelpool start`` recorded it in ``home`` (cluster.json, management_token)."""
    from modelpool.cluster.local_cluster import read_state
    from modelpool.cluster.paths import cache_dir, objects_dir as default_objects, token_path

    state = read_state(home) or {}
    if not state.get("address"):
        raise SystemExit(f"no running cluster recorded in {home}/cluster.json: start one, or leave out --home")
    token = token or os.environ.get("MODELPOOL_TOKEN") or os.environ.get("MODELPOOL_MANAGEMENT_TOKEN") \
        or token_path(home).read_text().strip()
    return Target(url=(url or state["url"]).rstrip("/"), token=token, ray_port=int(state["address"].rsplit(":", 1)[1]),
                  grpc_target=grpc_target, cache_dir=cache_dir(home),
                  objects_dir=objects_dir or os.environ.get("MODELPOOL_OBJECT_STORE") or str(default_objects(home)))


class Chaos:
    """Carries out the schedule's events (each on a thread of its own) and keeps what they did."""

    def __init__(self, target: Target, session: str, management: Management, recorder: Recorder,
                 batch_rows: int, log: Callable[[str], None]) -> None:
        self.target, self.session, self.management, self.recorder, self.log = \
            target, session, management, recorder, log
        self.batch_rows = batch_rows
        self.kills: list[Kill] = []
        self.jobs: list = []
        self._lock = threading.Lock()
        self.low, self.high = management.workers(*SCALED)
        self.up = (self.low + 1, max(self.high, self.low + 1))
        self.wanted = self.low  # the fewest replicas of SCALED the last scale sent asks for

    def do(self, event: Event) -> None:
        try:
            if event.kind in (SCALE_UP, SCALE_DOWN):
                low, high = self.up if event.kind == SCALE_UP else (self.low, self.high)
                with self._lock:
                    self.wanted = low  # from the moment it is sent: a replica killed just before may not come back
                done = self.management.scale(event.kind.replace("_", " "), *SCALED, low, high)
                self.log(f"{event.kind.replace('_', ' ')} {SCALED[0]} v{SCALED[1]} to {low}..{high}: "
                         f"{'done' if done else 'FAILED'}")
            elif event.kind == BATCH:
                rows = [IRIS[i % len(IRIS)] for i in range(self.batch_rows)]
                job = self.management.batch(*BATCH_SERVICE, rows)
                self.jobs.append(job)
                self.log(f"batch job {job.execution_id[:8]} ({job.rows} rows): {job.state} after "
                         f"{job.ended_s - job.submitted_s:.1f} s")
            elif event.kind in (KILL_REPLICA, KILL_MANAGEMENT):
                self._kill(event.target)
        except Exception as exc:  # noqa: BLE001 - an event that broke is logged; the run goes on
            self.log(f"{event.kind} failed: {type(exc).__name__}: {exc}")

    def _kill(self, app: str) -> None:
        at = self.recorder.now()
        killed = soak_procs.kill_replica(self.session, app)
        if killed is None:
            self.log(f"kill {app}: no replica process found")
            with self._lock:
                self.kills.append(Kill(at, app, "(none found)", 0))
            return
        pid, role, count = killed
        with self._lock:
            index = len(self.kills)
            self.kills.append(Kill(at, app, role, pid))
        self.log(f"killed {role} (pid {pid}) with SIGKILL")
        if app == "management":
            back = self.management.answering(RECOVERY_S)
        else:
            back = soak_procs.wait_replaced(self.session, app, pid, lambda: self._replicas_owed(app, count), RECOVERY_S)
        with self._lock:
            self.kills[index] = dataclasses.replace(self.kills[index], back_after_s=back)
        self.log(f"{app}: {'back after %.1f s' % back if back is not None else 'NOT back'}")

    def _replicas_owed(self, app: str, before_kill: int) -> int:
        """The replicas a kill's replacement restores: as many as ran before it, unless a scale-down since wants
        fewer (then Serve replaces none, and the app is back once it runs what it is asked for)."""
        if app != app_name(*SCALED):
            return before_kill
        with self._lock:
            return min(before_kill, self.wanted)

    def restore(self) -> bool:
        """iris v1 back to its workers, and management answering (waits out a management restart)."""
        deadline = time.monotonic() + RECOVERY_S
        while time.monotonic() < deadline:
            if self.management.scale("scale restore", *SCALED, self.low, self.high, record=False):
                return self.management.answering(RECOVERY_S) is not None
            time.sleep(2)
        return False


def _wait_until(recorder: Recorder, at_s: float) -> None:
    while (left := at_s - recorder.now()) > 0:
        time.sleep(min(left, 1.0))


def run(target: Target, plan: ChaosPlan, *, clients: int = 8, rate: float = 10.0, batch_rows: int = 50,
        log: Callable[[str], None] = print) -> SoakReport:
    """One soak run against a running cluster: load and chaos for ``plan.duration_s``, then the report."""
    require_loopback(target.url)
    session = soak_procs.session_dir(target.ray_port)
    recorder = Recorder()
    management = Management(target.url, target.token, recorder)
    chaos = Chaos(target, session, management, recorder, batch_rows,
                  lambda line: log(f"[{recorder.now():6.1f}s] {line}"))
    stop = threading.Event()
    workers = [InferenceClient(i, target.url, target.grpc_target, rate, recorder, stop) for i in range(clients)]
    sampler = soak_procs.Sampler(session, recorder.now, plan.sample_every_s)
    recorder.started = time.monotonic()  # t = 0: the load starts now
    sampler.start()
    for worker in workers:
        worker.start()
    pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="soak-event")
    try:
        for event in events(plan):
            _wait_until(recorder, event.at_s)
            pool.submit(chaos.do, event)
        _wait_until(recorder, plan.duration_s)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        sampler.stop()
        pool.shutdown(wait=True)  # batch jobs end (or give up) within their own timeout
        restored = chaos.restore()
        log(f"end: {len(recorder.requests)} requests; {SCALED[0]} v{SCALED[1]} restored to "
            f"{chaos.low}..{chaos.high}: {'yes' if restored else 'NO'}")
    ids = [job.execution_id for job in chaos.jobs]
    objects = settled_objects(target, ids, management.idempotency_keys)
    management.close()
    return build(plan, recorder.requests, chaos.kills, chaos.jobs, sampler.samples, objects)


def settled_objects(target: Target, execution_ids: list[str], keys: list[str]) -> dict:
    """The leftovers once a job's clean-up (lease release, after its final state) has had its moment."""
    deadline = time.monotonic() + OBJECTS_SETTLE_S
    while True:
        found = soak_objects.scan(target.objects_dir, target.cache_dir, execution_ids, keys)
        if found.get("stray_count", 0) == 0 or time.monotonic() > deadline:
            return found
        time.sleep(1)


def write(report: SoakReport, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.md").write_text(soak_markdown.render(report))
    (out / "soak.json").write_text(json.dumps(report.to_json(), indent=1))
    return out / "soak.md"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="10m", help="how long: 60s, 10m, 1h (default 10m)")
    parser.add_argument("--url", help="a running cluster's URL (with --home, or its token in MODELPOOL_TOKEN)")
    parser.add_argument("--home", type=Path, help="a running cluster's MODELPOOL_HOME (token, Ray port, object store)")
    parser.add_argument("--grpc", default="", help="the running cluster's gRPC front, host:port (else no gRPC load)")
    parser.add_argument("--clients", type=int, default=8, help="inference clients (default 8)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second per client (default 10)")
    parser.add_argument("--batch-rows", type=int, default=50, help="records per batch job (default 50)")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds after a replica kill (default 10)")
    parser.add_argument("--management-grace", type=float, default=30.0,
                        help="seconds after the management kill, for management calls (default 30)")
    parser.add_argument("--no-management-kill", action="store_true", help="do not kill the management replica")
    parser.add_argument("--out", type=Path, help="results folder (default results/soak-<UTC timestamp>)")
    args = parser.parse_args(argv)
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        parser.error(str(exc))
    if args.clients < 1 or args.rate <= 0 or args.batch_rows < 1:
        parser.error("--clients, --rate and --batch-rows must be positive")
    plan = plan_for(duration, management_kill=not args.no_management_kill, grace_s=args.grace,
                    management_grace_s=args.management_grace)
    out = args.out or Path("results") / time.strftime("soak-%Y%m%dT%H%M%SZ", time.gmtime())
    options = dict(clients=args.clients, rate=args.rate, batch_rows=args.batch_rows)
    if args.url or args.home:
        from modelpool.cluster.paths import home_dir

        report = run(target_from_home(args.home or home_dir(), args.url, args.grpc), plan, **options)
    else:
        from loadtests.local_cluster import bench_cluster  # imports Ray's plumbing: only when a cluster is wanted

        print("starting a throwaway modelpool cluster ...", flush=True)
        with bench_cluster() as cluster:
            report = run(Target(cluster.url, cluster.token, int(cluster.ray_address.rsplit(":", 1)[1]),
                                cluster.grpc_target, str(cluster.home / "objects"), cluster.home / "cache"),
                         plan, **options)
    path = write(report, out)
    print("\n" + "\n".join(soak_markdown.verdict_lines(report)))
    print(f"\nreport: {path} (series: {out / 'soak.json'})")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
