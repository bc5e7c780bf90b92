"""Tracing benchmark (issue 17): what tracing and the status page cost the serving path, in one run.

Three figures, each a ratio of req/s against a baseline measured in the same run, for the iris V2 REST
path at c=64 (``wrk -t1``, one row per request, ``loadtests.bench_serving.BODY``):

1. tracing off against a build without tracing: the code at ``--baseline-rev`` (default ``b37dc4c``, the
   last commit before tracing), extracted with ``git archive`` into a temp dir and started through a
   PYTHONPATH shim (below) on the same settings as the current build;
2. ``--tracing --trace-sample-ratio 0.01`` against tracing off (target >= 0.95x), the spans going to a
   real OTLP/HTTP receiver (``tests.otlp_receiver``) whose count the report shows;
3. the status page open in headless chromium (logged in through its form, polling ``/ui/state``) while wrk
   runs, against not open, on the tracing-off cluster (target >= 0.95x). The browser runs on the same
   cores as the cluster, so this figure includes its rendering too: an upper bound on the page's cost.

One cluster at a time (an idle cluster costs ~25% of a core on 2 cores), each started fresh, warmed up and
stopped, and the configurations interleaved round by round so the machine's drift hits each alike. A start
costs ~100 s here and a run 8 s, so each cluster is measured ``--runs`` times (default 2), and on the
tracing-off cluster the page runs alternate with runs without it, which bracket them::

    round: baseline cluster: B B | current, tracing off: O P O P O | current, tracing 1%: T T

A configuration's figure in a round is the mean req/s of its runs there; each comparison is reported as the
median of its per-round ratios (runs minutes apart at most) and as the ratio of the medians over all runs.
~6-7 min a round (three cluster starts, ~100 s each here), ~20 min with the defaults (20.8 min measured).

Why a shim: the editable install maps ``modelpool.cluster`` to this checkout with a meta-path finder that
Python consults only after the normal path finder, so a real ``modelpool/`` folder earlier on the path
wins. The shim is that folder, the baseline's ``modelpool/*`` and its ``cluster``, ``deployments`` and
``management`` linked into it; it is on PYTHONPATH and is the cwd of ``modelpool start`` (Ray puts the
driver's cwd on its workers' path, ahead of site-packages; ``ray start`` passes PYTHONPATH to every
replica). The benchmark checks where the modules resolve, in a fresh interpreter and inside the running
replicas (``__ray_call__``), and stops if anything comes from this checkout.

Needs wrk and Debian's chromium. Run it under ``flock /tmp/modelpool-ray.lock`` where other clusters run.
``python -m loadtests.bench_tracing [--seconds 8] [--rounds 3] [--runs 2] [--baseline-rev b37dc4c]
[--out results/bench_tracing.md]``
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import chdir, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

from loadtests.bench_graph import median_result
from loadtests.bench_serving import BODY, V2_PATH, wait_http
from loadtests.local_cluster import BenchCluster, bench_cluster
from loadtests.report import publish
from loadtests.wrk import LoadResult, require_wrk, run_wrk

ROOT = Path(__file__).resolve().parents[1]  # this checkout: the current build
BASELINE_REV = "b37dc4c"
SAMPLE_RATIO = 0.01
TARGET = 0.95
CONNECTIONS = 64
SETTLE_S = 5  # idle after start, before the warm-up: the start's own work (examples, first applies) is done
PACKAGES = ("cluster", "deployments", "management")  # top-level folders that import as modelpool.<name>
#: Imported in a fresh interpreter with the baseline's environment: the face, the plumbing, a replica's and
#: management's code; each must resolve inside the extracted tree.
CHECKED_MODULES = ("modelpool.cli", "modelpool.cluster.settings", "modelpool.deployments.rest_entry",
                   "modelpool.management.api")
CONFIGS = ("baseline", "off", "page", "traced")  # the order within a round

Runs = dict[str, list[list[LoadResult]]]  # configuration -> round -> the runs of that round


def round_rps(runs: Sequence[LoadResult]) -> float:
    """A configuration's req/s in one round: the mean of its runs there."""
    return statistics.fmean(r.requests_per_s for r in runs)


def every_run(rounds: Sequence[Sequence[LoadResult]]) -> list[LoadResult]:
    return [run for runs in rounds for run in runs]


@dataclass(frozen=True)
class Comparison:
    """``numerator``'s req/s over ``denominator``'s."""

    label: str
    numerator: str
    denominator: str
    target: Optional[float]  # None: "no difference beyond the noise"

    def per_round(self, runs: Runs) -> list[float]:
        return [round_rps(num) / max(round_rps(den), 1e-9)
                for num, den in zip(runs[self.numerator], runs[self.denominator])]

    def of_medians(self, runs: Runs) -> float:
        return (median_result(every_run(runs[self.numerator])).requests_per_s
                / max(median_result(every_run(runs[self.denominator])).requests_per_s, 1e-9))

    def met(self, ratios: Sequence[float]) -> bool:
        """A target: the median ratio reaches it. No target: the rounds disagree on the sign of the difference
        (1.0 lies within them), i.e. the difference is not larger than round-to-round noise."""
        if self.target is None:
            return min(ratios) <= 1.0 <= max(ratios)
        return statistics.median(ratios) >= self.target


def comparisons(rev: str) -> tuple[Comparison, ...]:
    return (
        Comparison(f"tracing off / build without tracing ({rev})", "off", "baseline", None),
        Comparison(f"tracing on at {SAMPLE_RATIO:.0%} / tracing off", "traced", "off", TARGET),
        Comparison("status page open / not open (tracing off, same cluster)", "page", "off", TARGET),
    )


@dataclass
class Extras:
    """What shows that each configuration was what it claims: where the baseline's code came from, the spans
    the receiver got, the page's refreshes."""

    baseline_commit: str = ""
    baseline_files: dict[str, str] = field(default_factory=dict)      # module -> file, fresh interpreter
    replica_files: dict[str, str] = field(default_factory=dict)       # replica -> its rest_entry / api file
    ui_status: dict[str, int] = field(default_factory=dict)           # build -> GET /ui status (no login)
    spans: list[tuple[int, int, int]] = field(default_factory=list)   # per run: spans, traces, requests
    refreshes: list[int] = field(default_factory=list)                # per page run: /ui/state answers during wrk
    browser_cpu_s: list[float] = field(default_factory=list)          # per page run: chromium + playwright CPU
    page_errors: list[str] = field(default_factory=list)
    seconds_taken: float = 0.0


# --- the baseline build: extracted tree and shim -------------------------------------------------------


def shim_links(source: Path) -> dict[str, Path]:
    """The shim's symlinks (path inside the shim -> target): ``modelpool/<entry>`` for each entry of the
    baseline's ``modelpool/`` face, and ``modelpool/cluster`` etc. for the layers, as the editable install maps them."""
    links = {f"modelpool/{entry.name}": entry for entry in sorted((source / "modelpool").iterdir())
             if entry.name != "__pycache__"}
    for package in PACKAGES:
        if f"modelpool/{package}" in links:
            raise ValueError(f"{source}/modelpool/{package} would hide the {package}/ layer")
        links[f"modelpool/{package}"] = source / package
    return links


def build_shim(source: Path, shim: Path) -> Path:
    """Create the shim (a real ``modelpool/`` folder of symlinks) under ``shim``; returns ``shim``."""
    for relative, target in shim_links(source).items():
        link = shim / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return shim


def misplaced(files: Mapping[str, str], inside: Path) -> dict[str, str]:
    """The modules whose real file is not under ``inside`` (an empty answer is the check passing)."""
    root = inside.resolve()
    return {module: path for module, path in files.items() if not Path(path).resolve().is_relative_to(root)}


def baseline_env(shim: Path) -> dict:
    return {"PYTHONPATH": str(shim)}


def resolved_files(env: Mapping[str, str], cwd: Path, modules: Sequence[str] = CHECKED_MODULES) -> dict[str, str]:
    """Where ``modules`` come from for a process started as ``modelpool start`` starts (env and cwd)."""
    code = ("import importlib, json, os\n"
            f"print(json.dumps({{m: os.path.realpath(importlib.import_module(m).__file__) for m in {tuple(modules)!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=cwd, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


#: Run in a fresh driver: each Serve replica's own sys.modules, asked inside the replica with ``__ray_call__``.
_REPLICA_PROBE = """
import json, sys
import ray
from modelpool.cluster.runtime import connect
connect(sys.argv[1])  # a head of modelpool start's listens on loopback only: its drivers must keep to loopback too
def files(_replica):
    import os, sys
    return {n: os.path.realpath(m.__file__) for n, m in list(sys.modules.items())
            if (n == "modelpool" or n.startswith("modelpool.")) and getattr(m, "__file__", None)}
found = {}
for actor in ray.util.list_named_actors(all_namespaces=True):
    if actor["name"].startswith("SERVE_REPLICA::"):
        handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
        found[actor["name"]] = ray.get(handle.__ray_call__.remote(files), timeout=60)
ray.shutdown()
print(json.dumps(found))
"""


def replica_modules(ray_address: str) -> dict[str, dict[str, str]]:
    """replica -> {module: real file} for every modelpool module each running Serve replica has imported."""
    out = subprocess.run([sys.executable, "-c", _REPLICA_PROBE, ray_address], capture_output=True, text=True,
                         check=True, timeout=180, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


@contextmanager
def baseline_tree(rev: str, extras: Extras) -> Iterator[tuple[Path, Path]]:
    """The baseline's code extracted (``git archive``: no git metadata touched) and its shim; yields both.
    Stops the benchmark if a fresh interpreter with the shim's environment still imports this checkout."""
    extras.baseline_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                                            capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="modelpool-baseline-") as tmp:
        source, shim = Path(tmp) / "src", Path(tmp) / "shim"
        source.mkdir()
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", extras.baseline_commit], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(source)], stdin=archive.stdout, check=True)
        archive.stdout.close()
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {rev} failed")
        build_shim(source, shim)
        extras.baseline_files = resolved_files(baseline_env(shim), shim)
        for module, path in extras.baseline_files.items():
            print(f"baseline {module} -> {path}", flush=True)
        wrong = misplaced(extras.baseline_files, source)
        if wrong:
            raise SystemExit(f"the baseline does not resolve to {source}: {wrong}")
        yield source, shim


def check_replicas(cluster: BenchCluster, source: Path, extras: Extras) -> None:
    """Every running replica of the baseline cluster imported modelpool from the extracted tree, none from here."""
    found = replica_modules(cluster.ray_address)
    if not found:
        raise SystemExit("no Serve replica found to check the baseline's imports in")
    for replica, files in found.items():
        wrong = misplaced(files, source)
        if wrong or not files:
            raise SystemExit(f"replica {replica} runs code from outside the baseline tree {source}: {wrong or files}")
        shown = next((files[m] for m in ("modelpool.deployments.rest_entry", "modelpool.management.api",
                                         "modelpool.deployments.replica_base") if m in files), next(iter(files.values())))
        extras.replica_files[replica] = shown
        print(f"baseline replica {replica}: {len(files)} modelpool modules, all from {source} (e.g. {shown})",
              flush=True)


# --- measuring -----------------------------------------------------------------------------------------


def ui_status(cluster: BenchCluster) -> int:
    """GET /ui without a session: the login form (401) where the status page exists, 404 on the baseline."""
    import requests

    return requests.get(f"{cluster.url}/ui", timeout=30).status_code


def warm(url: str) -> None:
    """The same preparation for every configuration: the start's work settles, connections and caches warm."""
    time.sleep(SETTLE_S)
    wait_http(url)
    for connections in (8, CONNECTIONS):
        run_wrk(url, BODY, connections, 2)


def show(round_: int, name: str, result: LoadResult, note: str = "") -> None:
    print(f"  round {round_ + 1} {name:<8} c={CONNECTIONS} {result.requests_per_s:>8.1f} req/s  p50 "
          f"{result.p50_ms:7.2f} ms  p99 {result.p99_ms:8.2f} ms  non-2xx {result.errors}{note}", flush=True)


#: the page's own count of its ``/ui/state`` fetches (the Resource Timing buffer holds 250; a run makes ~10)
STATE_FETCHES_JS = "performance.getEntriesByType('resource').filter(e => e.name.endsWith('/ui/state')).length"


@contextmanager
def status_page(cluster: BenchCluster, errors: list[str]) -> Iterator[object]:
    """Headless chromium logged in through ``/ui``'s form, the page polling ``/ui/state``; yields the page. The
    browser is closed (and checked gone) on exit.

    No network listener is attached: playwright would then carry every request's events from chromium to its
    driver (a Node.js process) and into this one, CPU that a person's browser does not spend. The page counts its
    own fetches (``STATE_FETCHES_JS``)."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS, kill_leftover_chromium

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{cluster.url}/ui")
            page.fill("[data-testid=token]", cluster.token)
            with page.expect_response(lambda r: r.url.endswith("/ui/state") and r.status == 200):
                page.click("[data-testid=login]")
            yield page
        finally:
            browser.close()
    left = kill_leftover_chromium()
    if left:
        raise RuntimeError(f"chromium processes outlived the browser: {left}")


def client_cpu_s() -> float:
    """CPU seconds used so far by this process and its descendants but wrk: with the page open, playwright's driver
    and chromium, the browser's side of the page's cost (the machine's cores are shared with the cluster)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            if child.name() != "wrk":
                total += sum(child.cpu_times()[:2])
        except psutil.Error:  # gone meanwhile
            pass
    return total


def run_with_page(cluster: BenchCluster, url: str, seconds: int, errors: list[str]) -> tuple[LoadResult, int, float]:
    """wrk with the status page open: (result, the page's ``/ui/state`` fetches while wrk ran, the browser side's
    CPU seconds meanwhile). This thread waits on wrk meanwhile: playwright's driver stays idle, as no driver is
    attached to a viewer's browser; the page polls by itself."""
    with status_page(cluster, errors) as page:
        before, cpu = page.evaluate(STATE_FETCHES_JS), client_cpu_s()
        result = run_wrk(url, BODY, CONNECTIONS, seconds)
        cpu = client_cpu_s() - cpu
        return result, page.evaluate(STATE_FETCHES_JS) - before, cpu


def traced_run(url: str, seconds: int, receiver) -> tuple[LoadResult, int, int]:
    """wrk on the tracing cluster; (result, spans and traces that started during the run), counted once the
    replicas' batch processors (1 s delay) have exported them."""
    started_ns = time.time_ns()
    result = run_wrk(url, BODY, CONNECTIONS, seconds)
    ended_ns = time.time_ns()
    time.sleep(4)
    spans = [s for s in list(receiver.spans) if started_ns <= s.start_ns <= ended_ns]
    return result, len(spans), len({s.trace_id for s in spans})


def measure(args: argparse.Namespace, extras: Extras) -> Runs:
    """``args.rounds`` rounds of the four configurations, three fresh clusters a round (see the module's doc)."""
    from tests.otlp_receiver import OtlpReceiver

    runs: Runs = {name: [] for name in CONFIGS}

    def wrk(round_: int, name: str, url: str) -> None:
        runs[name][round_].append(run_wrk(url, BODY, CONNECTIONS, args.seconds))
        show(round_, name, runs[name][round_][-1])

    with baseline_tree(args.baseline_rev, extras) as (source, shim), OtlpReceiver() as receiver:
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            for name in CONFIGS:
                runs[name].append([])
            with chdir(shim), bench_cluster(baseline_env(shim)) as cluster:  # cwd: see the module's doc
                url = f"{cluster.url}{V2_PATH}"
                warm(url)
                if round_ == 0:
                    check_replicas(cluster, source, extras)
                    extras.ui_status["baseline"] = ui_status(cluster)
                for _ in range(args.runs):
                    wrk(round_, "baseline", url)

            with bench_cluster({"MODELPOOL_TRACING": "false"}) as cluster:
                url = f"{cluster.url}{V2_PATH}"
                warm(url)
                if round_ == 0:
                    extras.ui_status["current"] = ui_status(cluster)
                for _ in range(args.runs):
                    wrk(round_, "off", url)
                    result, refreshes, cpu = run_with_page(cluster, url, args.seconds, extras.page_errors)
                    runs["page"][round_].append(result)
                    extras.refreshes.append(refreshes)
                    extras.browser_cpu_s.append(cpu)
                    show(round_, "page", result, f"  /ui/state refreshes {refreshes}, browser side CPU {cpu:.2f} s")
                wrk(round_, "off", url)

            with bench_cluster({"MODELPOOL_TRACING": "true", "MODELPOOL_OTLP_ENDPOINT": receiver.endpoint,
                                "MODELPOOL_TRACE_SAMPLE_RATIO": str(SAMPLE_RATIO)}) as cluster:
                url = f"{cluster.url}{V2_PATH}"
                warm(url)
                for _ in range(args.runs):
                    result, spans, traces = traced_run(url, args.seconds, receiver)
                    runs["traced"][round_].append(result)
                    extras.spans.append((spans, traces, round(result.requests_per_s * args.seconds)))
                    show(round_, "traced", result, f"  spans {spans} in {traces} traces")
    return runs


# --- the report ------------------------------------------------------------------------------------------


LABELS = {
    "baseline": "build without tracing ({rev}), fresh cluster",
    "off": "current build, tracing off, fresh cluster",
    "page": "current build, tracing off, status page open and refreshing (same cluster as off, runs alternating)",
    "traced": f"current build, `--tracing --trace-sample-ratio {SAMPLE_RATIO:g}`, fresh cluster, OTLP receiver",
}


def report(runs: Runs, extras: Extras, args: argparse.Namespace) -> str:
    rev = f"{args.baseline_rev} = {extras.baseline_commit[:12]}" if extras.baseline_commit else args.baseline_rev
    meds = {name: median_result(every_run(rounds)) for name, rounds in runs.items()}

    def listed(values: Sequence[float], fmt: str) -> str:
        return ", ".join(format(v, fmt) for v in values)

    lines = [
        f"iris LogisticRegression, one row per V2 request (`{V2_PATH}`), wrk -t1 c={CONNECTIONS}, "
        f"{os.cpu_count()} cores; {args.rounds} rounds, each a fresh cluster per build and tracing setting (one cluster "
        f"at a time: started, warmed up, measured, stopped), {args.runs} runs of {args.seconds}s per configuration and "
        f"cluster (tracing off: {args.runs + 1}, alternating with the page's); took {extras.seconds_taken / 60:.1f} min",
        "",
        "| configuration | req/s (median of runs) | p50 ms | p99 ms | non-2xx (all runs) | req/s per round (mean of its runs) |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {LABELS[name].format(rev=rev)} | {meds[name].requests_per_s:.0f} | {meds[name].p50_ms:.2f} | "
          f"{meds[name].p99_ms:.2f} | {meds[name].errors} | {listed([round_rps(r) for r in runs[name]], '.0f')} |"
          for name in CONFIGS],
        "",
        "| ratio (req/s) | median of per-round ratios | ratio of medians | per round | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for comparison in comparisons(rev):
        ratios = comparison.per_round(runs)
        target = "no difference beyond the noise" if comparison.target is None else f">= {comparison.target:g}x"
        lines.append(f"| {comparison.label} | {statistics.median(ratios):.3f}x | {comparison.of_medians(runs):.3f}x | "
                     f"{listed(ratios, '.3f')} | {target} | {'yes' if comparison.met(ratios) else 'NO'} |")
    spans = "; ".join(f"{s} spans in {t} traces of ~{n} requests ({t / max(n, 1):.2%})" for s, t, n in extras.spans)
    lines += [
        "",
        f"- Baseline: `{rev}`, extracted with `git archive`, run through the PYTHONPATH shim; in a fresh interpreter "
        f"{', '.join(f'{m} -> {p}' for m, p in extras.baseline_files.items())}; inside the baseline cluster's "
        f"{len(extras.replica_files)} Serve replicas every modelpool module came from the extracted tree. "
        f"GET /ui without a session: baseline {extras.ui_status.get('baseline', '?')}, "
        f"current {extras.ui_status.get('current', '?')} (the login form).",
        f"- Tracing on: spans received by the OTLP receiver that started during each run: {spans or 'none'}.",
        f"- Status page: `/ui/state` answers the page received during each wrk run: "
        f"{listed(extras.refreshes, 'd') or 'none'} (it polls 1.5 s after each answer); page script errors: "
        f"{len(extras.page_errors)}. Chromium ran on the same cores as the cluster: the browser side (chromium, "
        f"playwright's driver, this process) used {listed(extras.browser_cpu_s, '.2f') or 'no'} CPU seconds in those "
        f"runs (median {statistics.median(extras.browser_cpu_s or [0]) / (args.seconds * (os.cpu_count() or 1)):.1%} "
        "of the machine).",
        "- A per-round ratio compares the mean req/s of each configuration's runs in that round (minutes apart at "
        "most); the page's runs alternate with tracing-off runs on the same cluster, which come before and after them.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8, help="length of each measured wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all four configurations (3 cluster starts each)")
    parser.add_argument("--runs", type=int, default=2, help="runs per configuration and cluster in a round")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="the build without tracing (a git revision)")
    parser.add_argument("--out", default="results/bench_tracing.md")
    args = parser.parse_args()
    args.out = str(Path(args.out).resolve())  # the baseline's cluster starts from another cwd
    require_wrk()
    began = time.monotonic()
    extras = Extras()
    runs = measure(args, extras)
    extras.seconds_taken = time.monotonic() - began
    publish(report(runs, extras, args), args.out)


if __name__ == "__main__":
    main()
