"""Where a request's time goes: a py-spy profile of a model replica under load, and the cluster's CPU.

On a throwaway ``modelpool start`` cluster (the example models, default settings) this measures:

1. the CPU each process of the cluster uses at idle (``--idle-seconds``), by process title;
2. the same under ``wrk`` at ``--connections`` on ``/v2/models/iris/infer`` (one iris row per request),
   with ``py-spy record`` sampling the iris replicas at the same time (``--nonblocking``: the
   replica is not paused while sampled);
3. from py-spy's stacks, the functions with the most samples, inclusive and self, as a share of
   the replica's busy samples.

Needs wrk and py-spy (``pip install -e '.[bench]'``; it reads other processes' memory, so it needs ptrace
rights, which root in a container has). Usage:
``python -m loadtests.profile_serving [--seconds 20] [--connections 64] [--out results/profile_serving.md]``
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import psutil

from loadtests.bench_serving import BODY, wait_http
from loadtests.local_cluster import bench_cluster
from loadtests.report import publish
from loadtests.wrk import run_wrk

#: cluster processes are told apart by their title (Ray sets ``ray::<Actor>`` on workers)
_TITLE = re.compile(r"^(ray::\S+|\S*(raylet|gcs_server|haproxy|dashboard|log_monitor|monitor\.py|runtime_env_agent)\S*)")


def cluster_processes() -> dict[int, str]:
    """PID -> a short title for every Ray, Serve and haproxy process on this machine."""
    found = {}
    for process in psutil.process_iter(["pid", "cmdline", "name"]):
        cmdline = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
        match = _TITLE.search(cmdline) or (_TITLE.search(process.info["name"] or ""))
        if match or "ray/" in cmdline and "python" in cmdline:
            title = match.group(1) if match else Path((process.info["cmdline"] or ["?"])[0]).name
            # an actor's title gains ".method" while it runs one (``.check_health``): one process, one title
            found[process.info["pid"]] = re.sub(r"\.[A-Za-z_]\w*$", "", title.split("/")[-1])[:60]
    return found


def cpu_by_title(seconds: float) -> dict[str, float]:
    """Percent of one core each process title used over ``seconds`` (summed over its processes)."""
    processes = {pid: title for pid, title in cluster_processes().items()}
    before = {}
    for pid in processes:
        try:
            times = psutil.Process(pid).cpu_times()
            before[pid] = times.user + times.system
        except psutil.Error:
            pass
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    usage: dict[str, float] = collections.defaultdict(float)
    for pid, spent in before.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        usage[processes[pid]] += 100 * (times.user + times.system - spent) / elapsed
    return dict(sorted(usage.items(), key=lambda item: -item[1]))


def replica_pids(application_prefix: str) -> list[int]:
    return [pid for pid, title in cluster_processes().items() if f"ServeReplica:{application_prefix}" in title]


def record(pids: Iterable[int], seconds: int, out_dir: Path) -> list[Path]:
    """Start one ``py-spy record`` per PID (raw folded stacks); returns the files once they finish."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    jobs = []
    for pid in pids:
        path = out_dir / f"replica-{pid}.folded"
        jobs.append((subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
                                       "--nonblocking", "--format", "raw", "--output", str(path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), path))
    for job, _ in jobs:
        _, err = job.communicate(timeout=seconds + 60)
        if job.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.strip()[-500:]}")
    return [path for _, path in jobs]


def _frames(stack: str) -> list[str]:
    """Folded frames ``func (file:line)`` -> ``func (file)`` without the line, for grouping."""
    return [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]


def _samples(folded_files: Iterable[Path]) -> Iterator[tuple[list[str], int]]:
    """(frames, outermost first; sample count) for each line of py-spy's raw (folded) output."""
    for path in folded_files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                yield _frames(stack), int(count)


def top_functions(folded_files: Iterable[Path], limit: int) -> tuple[int, list[tuple[str, int, int]]]:
    """(busy samples, [(function, inclusive samples, self samples)]) sorted by inclusive samples."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for stack, samples in _samples(folded_files):
        total += samples
        frames = [_shorten(frame) for frame in stack]
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    rows = [(name, count, own[name]) for name, count in inclusive.most_common()]
    return total, rows[:limit] + sorted(((n, i, s) for n, i, s in rows[limit:] if s * 50 > total), key=lambda r: -r[2])[:10]


def _shorten(frame: str) -> str:
    """Drop site-packages and the checkout's path from a frame's file."""
    return re.sub(r"\(/\S*?(site-packages|work/main)/", "(", frame)


#: Frames a thread parks in (Ray's core worker loop, an idle thread's run, a pool's wait for work)
WAITING_FRAMES = ("main_loop (", "run (threading.py)", "_worker (concurrent")
#: A sample's stage: the first rule (in this order) that one of its frames matches. Frames are ``func (file)``.
STAGES = [
    ("the model's predict (sklearn)", ("sklearn/",)),
    ("logging (access lines, the flusher)", ("(logging/", "log_flush", "access_log")),
    ("metrics (Serve's and modelpool's, reported)", ("metrics", "_report_cached")),
    ("modelpool's answer path (token, route, decode, batcher, encode)", ("(deployments/",)),
    ("Serve's request path in the replica (direct ingress, wrappers, send)", ("ray/serve/",)),
    ("HTTP server (uvicorn + httptools: parse, write)", ("uvicorn/", "httptools")),
    ("waiting (Ray's core worker, idle threads)", WAITING_FRAMES),
]


def stage_shares(folded_files: Iterable[Path]) -> dict[str, float]:
    """Each stage's share of the busy samples; a sample counts once, in its first matching stage."""
    counts: collections.Counter = collections.Counter()
    total = 0
    for frames, samples in _samples(folded_files):
        total += samples
        name = next((stage for stage, marks in STAGES if any(m in f for f in frames for m in marks)), "other")
        if name.startswith("waiting") and not frames[-1].startswith(WAITING_FRAMES):
            name = "other"  # a thread's own work below those frames, not waiting
        counts[name] += samples
    return {name: counts[name] / max(total, 1) for name in [s for s, _ in STAGES] + ["other"]}


def budget_lines(shares: dict[str, float], replica_cpu_percent: float, requests_per_s: float) -> list[str]:
    """Microseconds of replica CPU per request by stage: its CPU per request, split by the busy samples that
    are not waiting (waiting samples are threads parked in C, counted by py-spy but costing no CPU)."""
    per_request_us = replica_cpu_percent / 100 / max(requests_per_s, 1e-9) * 1e6
    working = 1 - shares.get("waiting (Ray's core worker, idle threads)", 0)
    lines = [f"Per-request budget in the iris replica: {replica_cpu_percent:.0f}% of a core at {requests_per_s:.0f} req/s "
             f"= {per_request_us:.0f} us of CPU per request, split by py-spy's working samples", "",
             "| stage | share of working samples | us per request |", "| --- | --- | --- |"]
    for name, share in shares.items():
        if name.startswith("waiting") or share == 0:
            continue
        lines.append(f"| {name} | {100 * share / working:.1f}% | {per_request_us * share / working:.0f} |")
    return lines


def report(idle: dict, loaded: dict, load, total: int, rows: list, shares: dict, args) -> str:
    lines = [f"`python -m loadtests.profile_serving --seconds {args.seconds} --connections {args.connections}`, "
             f"{os.cpu_count()} cores; wrk -t1 c={args.connections}, one iris row per V2 request to "
             f"/v2/models/iris/infer: {load.requests_per_s:.0f} req/s, p50 {load.p50_ms:.2f} ms, "
             f"p99 {load.p99_ms:.2f} ms, {load.errors} errors", "",
             "| process | idle, % of a core | under load, % of a core |", "| --- | --- | --- |"]
    for title in sorted(set(idle) | set(loaded), key=lambda t: -loaded.get(t, 0)):
        if idle.get(title, 0) >= 0.05 or loaded.get(title, 0) >= 0.5:
            lines.append(f"| {title} | {idle.get(title, 0):.1f} | {loaded.get(title, 0):.1f} |")
    lines.append(f"| **all** | **{sum(idle.values()):.1f}** | **{sum(loaded.values()):.1f}** |")
    replica_cpu = sum(v for k, v in loaded.items() if "ServeReplica:model:iris:" in k)
    lines += ["", *budget_lines(shares, replica_cpu, load.requests_per_s)]
    lines += ["", f"py-spy, iris replicas, {total} busy samples (250 Hz, --nonblocking): share of samples in a "
              "function and what it calls (inclusive), and in the function itself (self)", "",
              "| function | inclusive % | self % |", "| --- | --- | --- |"]
    for name, inclusive, own in rows:
        lines.append(f"| `{name}` | {100 * inclusive / max(total, 1):.1f} | {100 * own / max(total, 1):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--keep", default="", help="a folder to keep py-spy's folded stacks in")
    parser.add_argument("--out", default="results/profile_serving.md")
    args = parser.parse_args()
    with bench_cluster() as cluster, tempfile.TemporaryDirectory(prefix="modelpool-profile-") as scratch:
        url = f"{cluster.url}/v2/models/iris/infer"
        wait_http(url)
        run_wrk(url, BODY, 8, 3)
        time.sleep(5)  # let the warm-up's autoscaling metrics settle before measuring idle
        idle = cpu_by_title(args.idle_seconds)
        pids = replica_pids("model:iris")  # every version: the default is whichever examples made it
        loaded: dict = {}
        result: dict = {}
        sampler = threading.Thread(target=lambda: loaded.update(cpu_by_title(args.seconds - 2)))
        loader = threading.Thread(target=lambda: result.update(load=run_wrk(url, BODY, args.connections, args.seconds)))
        loader.start()
        time.sleep(1)
        sampler.start()
        folded = record(pids, args.seconds - 2, Path(scratch))
        loader.join()
        sampler.join()
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for path in folded:
                shutil.copy(path, Path(args.keep) / path.name)
        total, rows = top_functions(folded, args.top)
        shares = stage_shares(folded)
    publish(report(idle, loaded, result["load"], total, rows, shares, args), args.out)


if __name__ == "__main__":
    main()
