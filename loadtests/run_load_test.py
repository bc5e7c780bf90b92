"""The standard load test: a throwaway local cluster, the three locustfiles in turn, one summary table.

Usage: ``python -m loadtests.run_load_test [--seconds 30] [--users 32] [--out results/DIR]`` (``make loadtest``)

Starts a cluster with :func:`loadtests.local_cluster.bench_cluster` (private home, free ports on
127.0.0.1, always stopped), then runs locust headless against it, one locustfile after the other so
they do not skew each other's numbers: inference with the most users, management and batch with a
couple each (their calls start replicas and Ray tasks; a 2-CPU machine has little to spare). Each run
is bounded in time (``-t``, plus ``--stop-timeout`` for users to finish and clean up, plus a hard
subprocess timeout) and in users. Per locustfile, under ``results/<UTC timestamp>/``:
``<name>_stats.csv``, ``<name>_stats_history.csv``, ``<name>_failures.csv``, ``<name>_exceptions.csv``,
``<name>.html`` and ``<name>.log`` (locust's own output). Exit code 1 if any locustfile had a failure,
an exception, or no requests at all.

Load tests only ever target loopback: the cluster is started here, and :func:`require_loopback`
refuses any other host before locust is started.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from loadtests.load_summary import Summary, problem_lines, summarise, table

HERE = Path(__file__).resolve().parent
REPLICA_NUM_CPUS = "0.1"  # replicas reserve little, so the management users' extra models fit on 2 CPUs
SLACK_S = 120              # locust start-up (imports), shutdown and report writing, beyond -t and stop-timeout


@dataclass(frozen=True)
class Plan:
    """One locust run: which locustfile, how many users, how long users get to finish and clean up."""

    name: str
    locustfile: Path
    users: int
    spawn_rate: float
    stop_timeout_s: int


def plans(inference_users: int, management_users: int, batch_users: int) -> list[Plan]:
    return [
        Plan("inference", HERE / "locustfile.py", inference_users, max(1.0, inference_users / 2), 10),
        Plan("management", HERE / "locust_management.py", management_users, management_users, 30),
        Plan("batch", HERE / "locust_batch.py", batch_users, 1, 60),
    ]


def require_loopback(url: str) -> None:
    """Refuse anything but a loopback host: a load test aimed elsewhere is an attack on someone's service."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"refusing to load-test {url}: only loopback hosts (127.0.0.1, ::1, localhost) are targets")


def locust_command(plan: Plan, url: str, seconds: int, prefix: Path) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(plan.locustfile), "--headless", "-u", str(plan.users),
            "-r", f"{plan.spawn_rate:g}", "-t", f"{seconds}s", "--stop-timeout", str(plan.stop_timeout_s),
            "--host", url, "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary"]


def run_locust(plan: Plan, url: str, env: dict, seconds: int, out: Path) -> Summary:
    """One headless locust run, its output kept in ``<name>.log``; the summary of its CSV."""
    require_loopback(url)
    prefix = out / plan.name
    timeout_s = seconds + plan.stop_timeout_s + SLACK_S
    with open(out / f"{plan.name}.log", "w") as log:
        try:
            returncode: Optional[int] = subprocess.run(locust_command(plan, url, seconds, prefix), env=env, stdout=log,
                                                       stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:  # subprocess.run has killed it
            returncode = None
    summary = summarise(plan.name, prefix)
    if returncode is None:
        return dataclasses.replace(summary, problem=f"locust did not end within {timeout_s} s; killed")
    if returncode != 0 and summary.ok:  # exceptions in the locustfile itself are not request failures
        return dataclasses.replace(summary, problem=f"locust exited {returncode}: see {prefix}_exceptions.csv "
                                                    f"and {plan.name}.log")
    return summary


def default_out() -> Path:
    return Path("results") / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=30, help="run time of each locustfile (default 30)")
    parser.add_argument("--users", type=int, default=32, help="inference users (default 32)")
    parser.add_argument("--management-users", type=int, default=2, help="management users (default 2)")
    parser.add_argument("--batch-users", type=int, default=2, help="batch users (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default results/<UTC timestamp>)")
    args = parser.parse_args(argv)
    if min(args.seconds, args.users, args.management_users, args.batch_users) < 1:
        parser.error("--seconds and every user count must be at least 1")
    out: Path = args.out or default_out()
    out.mkdir(parents=True, exist_ok=True)

    from loadtests.local_cluster import bench_cluster  # imports Ray's plumbing: only when a cluster is wanted

    summaries: list[Summary] = []
    print("starting a throwaway modelpool cluster ...", flush=True)
    with bench_cluster({"MODELPOOL_REPLICA_NUM_CPUS": REPLICA_NUM_CPUS}) as cluster:
        require_loopback(cluster.url)
        env = {**cluster.env, "MODELPOOL_TOKEN": cluster.token}
        for plan in plans(args.users, args.management_users, args.batch_users):
            print(f"{plan.name}: {plan.users} users for {args.seconds} s against {cluster.url} ...", flush=True)
            summaries.append(run_locust(plan, cluster.url, env, args.seconds, out))
    print()
    print(table(summaries))
    problems = problem_lines(summaries, out)
    if problems:
        print("\nproblems:")
        print("\n".join(problems))
    print(f"\nresults: {out}")
    return 0 if all(s.ok for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
