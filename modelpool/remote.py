"""The ``modelpool`` commands that talk to a running cluster over HTTP: models, graphs, pools, services, batches.

Each command opens one :class:`~modelpool.client.Client` session (``with Client(...)``), so all the
calls of one command ride one keep-alive connection. Output is an aligned plain-text table for
people, or with ``--json`` the server's JSON (indented) and nothing else on stdout. Progress bars go
to stderr, and only when stderr is a terminal.

Exit codes: 0 done; 2 the request was refused (HTTP 4xx) or the command line's input is unusable;
1 anything else (server error, no connection, a wait that timed out, a batch that ended Failed).
Their arguments and help are :mod:`modelpool.remote_parser`'s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import requests

from modelpool.cluster.paths import HOME_ENV, home_dir
from modelpool.cluster.settings import env_name
from modelpool.client import DEFAULT_URL, Batch, Client, ModelpoolError, Service
from modelpool.records import read_delimited

URL_ENV = "MODELPOOL_URL"
BAR_WIDTH = 30


# ------------------------------------------------------------------------------------------ output
@dataclass
class Outcome:
    """What a command shows: ``data`` with --json, ``text`` otherwise; ``code`` is the exit code."""

    data: Any
    text: str
    code: int = 0


class CommandError(Exception):
    """A failure the command explains itself (bad input file, a wait that ended badly)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, two spaces apart; None shows as '-'."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells)


def _yes(value: Optional[bool]) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class ProgressBar:
    """``\\r[#####-----] 12/40 rows`` on stderr, redrawn in place; silent when stderr is not a terminal."""

    def __init__(self, unit: str, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.unit = unit
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.drawn = False

    def update(self, done: int, total: Optional[int]) -> None:
        if not self.enabled:
            return
        filled = BAR_WIDTH * min(done, total) // total if total else 0
        shown = "?" if total is None else total
        self.stream.write(f"\r[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{shown} {self.unit}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


# ------------------------------------------------------------------------------------------ inputs
def default_url() -> str:
    """$MODELPOOL_URL, else the URL ``modelpool start`` saved in the cluster state, else the default."""
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV]
    from modelpool.cluster.local_cluster import read_state

    try:
        state = read_state(home_dir())
    except OSError:
        state = None
    return (state or {}).get("url") or DEFAULT_URL


def read_csv(path: str) -> tuple[Optional[list[str]], list[list[Any]]]:
    """(header or None, rows) of a CSV or TSV file, read as the client reads batch records (modelpool.records)."""
    try:
        return read_delimited(path)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(str(exc)) from None


def _parse_rows(text: str, source: str) -> list:
    try:
        rows = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{source} is not JSON: {exc}") from None
    if not isinstance(rows, list) or not rows:
        raise CommandError(f"{source} must be a non-empty JSON list of rows, e.g. [[5.1, 3.5, 1.4, 0.2]]")
    return rows


def _read_text(path: str) -> str:
    """A file's text; ``-`` is stdin."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CommandError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from None


def _read_json_file(path: str) -> list:
    return _parse_rows(_read_text(path), path)


def read_graph(path: str) -> dict:
    """A graph file's JSON object (the root node or ``{"graph": ...}``), checked to be one before anything is sent."""
    source = "stdin" if path == "-" else path
    try:
        graph = json.loads(_read_text(path))
    except (ValueError, RecursionError) as exc:
        raise CommandError(f"{source} is not JSON: {exc}") from None
    if not isinstance(graph, dict):
        raise CommandError(f'{source} must be a JSON object: the root node, or {{"graph": {{"name": ..., '
                           f'"type": ..., "children": [...]}}}}')
    return graph


# ------------------------------------------------------------------------------------------ models
def models_list(c: Client, args: argparse.Namespace) -> Outcome:
    models = c.list_models()
    if args.json:
        return Outcome(models, "")
    services = {(s["name"], s["version"]): s for s in c.list_services()}
    rows = []
    for model in models:
        for record in c.describe_model(model["modelName"], "all"):
            service = services.get((record["modelName"], record["modelVersion"]), {})
            default = service.get("isDefault", record.get("isDefault"))
            rows.append((record["modelName"], record["modelVersion"], _yes(default),
                         f"{record.get('minWorkers', 0)}/{record.get('maxWorkers', 0)}",
                         service.get("state"), record.get("modelUrl")))
    return Outcome(models, table(("NAME", "VERSION", "DEFAULT", "WORKERS(min/max)", "STATUS", "URL"), rows))


def _describe_text(described: list[dict]) -> str:
    versions = table(("NAME", "VERSION", "DEFAULT", "POOL", "WORKERS(min/max)", "BATCH", "DELAY(ms)", "QUEUE",
                      "HANDLER", "URL"),
                     [(d["modelName"], d["modelVersion"], _yes(d.get("isDefault")), d.get("pool"),
                       f"{d.get('minWorkers', 0)}/{d.get('maxWorkers', 0)}", d.get("batchSize"),
                       d.get("maxBatchDelay"), d.get("maxQueuedRequests"), d.get("handler"), d.get("modelUrl"))
                      for d in described])
    workers = [(d["modelVersion"], w.get("id"), w.get("status"), w.get("node"), _yes(w.get("gpu")),
                w.get("memoryUsage"), w.get("startTime")) for d in described for w in d.get("workers") or []]
    if not workers:
        return versions
    return versions + "\n\n" + table(("VERSION", "WORKER", "STATUS", "NODE", "GPU", "MEMORY", "STARTED"), workers)


def models_describe(c: Client, args: argparse.Namespace) -> Outcome:
    described = c.describe_model(args.name, args.version)
    return Outcome(described, _describe_text(described))


def _status(answer: dict) -> Outcome:
    return Outcome(answer, str(answer.get("status", answer)))


def models_register(c: Client, args: argparse.Namespace) -> Outcome:
    return _status(c.register_model(args.model_url, model_name=args.model_name, handler=args.handler,
                                    initial_workers=args.initial_workers, batch_size=args.batch_size,
                                    max_batch_delay=args.max_batch_delay, synchronous=args.synchronous,
                                    response_timeout=args.response_timeout, startup_timeout=args.startup_timeout,
                                    max_queued_requests=args.max_queued_requests))


def _running(described: dict) -> int:
    return sum(1 for w in described.get("workers") or [] if w.get("status") == "READY")


def wait_for_workers(c: Client, name: str, version: Optional[str], target: Optional[int], timeout: float,
                     poll: float) -> dict:
    """Poll describe until the version runs ``target`` READY workers (its minWorkers when None)."""
    bar = ProgressBar("workers")
    deadline = time.monotonic() + timeout
    try:
        while True:
            described = c.describe_model(name, version)[0]
            want = target if target is not None else int(described.get("minWorkers") or 0)
            running = _running(described)
            bar.update(min(running, want), want)
            if running >= want:
                return described
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandError(f"{name} version {described['modelVersion']}: {running}/{want} workers READY "
                                   f"after {timeout:g}s (--wait-timeout)", code=1)
            time.sleep(min(poll, remaining))
    finally:
        bar.close()


def models_scale(c: Client, args: argparse.Namespace) -> Outcome:
    answer = c.scale_model(args.name, args.version, min_worker=args.min_worker, max_worker=args.max_worker,
                           number_gpu=args.number_gpu, batch_size=args.batch_size,
                           max_batch_delay=args.max_batch_delay, max_queued_requests=args.max_queued_requests,
                           synchronous=False)
    if not args.wait:
        return _status(answer)
    described = wait_for_workers(c, args.name, args.version, args.min_worker, args.wait_timeout, args.poll)
    return Outcome([described], f"{answer.get('status')}; {described['modelName']} version "
                                f"{described['modelVersion']}: {_running(described)} workers READY")


def models_unregister(c: Client, args: argparse.Namespace) -> Outcome:
    return _status(c.unregister_model(args.name, args.version))


def models_set_default(c: Client, args: argparse.Namespace) -> Outcome:
    return _status(c.set_default(args.name, args.version))


# ------------------------------------------------------------------------------------------ graphs
def _runs(node: dict) -> str:
    """What a graph node runs: a model version, another graph, or a built-in router with its weights."""
    if node.get("model"):
        return f"{node['model']} {node.get('version') or '(default)'}"
    if node.get("graph"):
        return f"graph {node['graph']}"
    if node.get("implementation"):
        weights = "/".join(f"{w:g}" for w in node.get("weights") or [])
        key = f" by {node['routing_header']}" if node.get("routing_header") else ""
        return f"{node['implementation']} {weights}".rstrip() + key
    return "-"


def _graph_nodes(node: dict, depth: int = 0) -> list[tuple[str, str, str]]:
    rows = [("  " * depth + str(node.get("name")), str(node.get("type") or "MODEL"), _runs(node))]
    for child in node.get("children") or []:
        rows.extend(_graph_nodes(child, depth + 1))
    return rows


def _graphs_text(graphs: list[dict]) -> str:
    return table(("NAME", "STATUS", "NODES", "ENDPOINT"),
                 [(g.get("name"), g.get("status"), len(_graph_nodes(g.get("graph") or {})), g.get("endpoint"))
                  for g in graphs])


def graphs_put(c: Client, args: argparse.Namespace) -> Outcome:
    return _status(c.put_graph(args.name, read_graph(args.file)))


def graphs_list(c: Client, _: argparse.Namespace) -> Outcome:
    graphs = c.list_graphs()
    return Outcome(graphs, _graphs_text(graphs))


def graphs_get(c: Client, args: argparse.Namespace) -> Outcome:
    graph = c.get_graph(args.name)
    return Outcome(graph, _graphs_text([graph]) + "\n\n" + table(("NODE", "TYPE", "RUNS"),
                                                                  _graph_nodes(graph.get("graph") or {})))


def graphs_delete(c: Client, args: argparse.Namespace) -> Outcome:
    return _status(c.delete_graph(args.name))


# ------------------------------------------------------------------------------------------ services and pools
def _services_text(services: list[dict]) -> str:
    return table(("NAME", "VERSION", "DEFAULT", "POOL", "STATE"),
                 [(s["name"], s["version"], _yes(s.get("isDefault")), s.get("pool"), s.get("state")) for s in services])


def services_list(c: Client, _: argparse.Namespace) -> Outcome:
    services = c.list_services()
    return Outcome(services, _services_text(services))


def services_predict(c: Client, args: argparse.Namespace) -> Outcome:
    rows = _parse_rows(args.rows, "--rows") if args.rows is not None else read_csv(args.csv)[1]
    predictions = c.get_service(args.name, args.version).predict(rows)
    return Outcome({"predictions": predictions},
                   table(("ROW", "PREDICTION"), [(i, _compact(p)) for i, p in enumerate(predictions)]))


def pools_list(c: Client, _: argparse.Namespace) -> Outcome:
    pooled = [s for s in c.list_services() if s.get("pool") == "dedicated"]
    return Outcome(pooled, _services_text(pooled))


def pools_set(c: Client, args: argparse.Namespace) -> Outcome:
    return _status(c.create_or_update_service_pool(args.name, args.version, args.initial_pool_size, args.max_pool_size))


def pools_status(c: Client, args: argparse.Namespace) -> Outcome:
    nodes = c.get_service_pool_status(args.name, args.version)
    return Outcome(nodes, table(("NODE", "STATUS", "ERRORS"),
                                [(n.get("computeNodeEndpoint"), n.get("status"), "; ".join(map(str, n.get("errors") or [])))
                                 for n in nodes]))


def pools_delete(c: Client, args: argparse.Namespace) -> Outcome:
    return _status(c.delete_service_pool(args.name, args.version))


# ------------------------------------------------------------------------------------------ batches
def _batch(c: Client, args: argparse.Namespace) -> Batch:
    """The job named by its execution id; the routes need nothing else (service/version only label it)."""
    return Service(c, args.service or "", args.version or "").get_batch(args.execution_id)


def _batch_text(status: dict) -> str:
    done = int(status.get("completedItems") or 0) + int(status.get("failedItems") or 0)
    total = status.get("totalItems")
    return table(("EXECUTION", "STATE", "ROWS(done/total)", "FAILED", "SERVICE", "VERSION"),
                 [(status.get("executionId"), status.get("state"), f"{done}/{'?' if total is None else total}",
                   status.get("failedItems"), status.get("service"), status.get("version"))])


def _wait(batch: Batch, args: argparse.Namespace) -> Outcome:
    bar = ProgressBar("rows")
    try:
        status = batch.wait(timeout=args.wait_timeout, poll=args.poll, progress=bar.update)
    finally:
        bar.close()
    code = 0 if status.get("state") == "Complete" else 1
    if code:
        print(f"modelpool: batch {batch.execution_id} ended {status.get('state')}", file=sys.stderr)
    return Outcome(status, _batch_text(status), code)


def batches_start(c: Client, args: argparse.Namespace) -> Outcome:
    if args.csv is not None:
        header, rows = read_csv(args.csv)
        records: list = [dict(zip(header, row)) for row in rows] if header else rows
    else:
        records = _read_json_file(args.json_file)
    batch = Service(c, args.name, args.version).batch(records, parallel_count=args.parallel_count)
    batch.start()
    if args.wait:
        return _wait(batch, args)
    return Outcome({"executionId": batch.execution_id, "state": "Pending"},
                   f"started batch {batch.execution_id} ({len(records)} rows); follow it with: "
                   f"modelpool batches wait {batch.execution_id}")


def batches_status(c: Client, args: argparse.Namespace) -> Outcome:
    status = _batch(c, args).status()
    return Outcome(status, _batch_text(status))


def batches_results(c: Client, args: argparse.Namespace) -> Outcome:
    answer = _batch(c, args).results().to_dict()
    rows = [(r.get("index"), r.get("status"), _compact(r.get("outputs")), r.get("error")) for r in answer.get("results", [])]
    return Outcome(answer, _batch_text(answer) + "\n\n" + table(("INDEX", "STATUS", "OUTPUTS", "ERROR"), rows))


def batches_cancel(c: Client, args: argparse.Namespace) -> Outcome:
    batch = _batch(c, args).cancel()
    answer = {"executionId": batch.execution_id, "state": batch.last_state}
    return Outcome(answer, f"batch {answer['executionId']}: {answer['state']}")


def batches_list(c: Client, args: argparse.Namespace) -> Outcome:
    ids = Service(c, args.service, args.version).get_batch_executions()  # unset filters are not sent
    return Outcome(ids, table(("EXECUTION",), [(i,) for i in ids]))


def batches_artifacts(c: Client, args: argparse.Namespace) -> Outcome:
    names = _batch(c, args).list_artifacts(args.index)
    return Outcome(names, table(("ARTIFACT",), [(n,) for n in names]))


def batches_download(c: Client, args: argparse.Namespace) -> Outcome:
    try:
        written = _batch(c, args).download(args.index, args.name, dest=args.dest)
    except ValueError as exc:  # a name that would land outside --dest: nothing was written
        raise CommandError(str(exc), code=1) from None
    return Outcome([str(p) for p in written], "\n".join(str(p) for p in written))


def batches_wait(c: Client, args: argparse.Namespace) -> Outcome:
    return _wait(_batch(c, args), args)


# ------------------------------------------------------------------------------------------ running
def _report(message: str, code: int) -> int:
    print(f"modelpool: {message}", file=sys.stderr)
    return code


def run(command: Callable[[Client, argparse.Namespace], Outcome], args: argparse.Namespace) -> int:
    """One command on one client session; errors become a line on stderr and an exit code."""
    url = args.url or default_url()
    try:
        with Client(url, token=args.token, timeout=args.timeout) as client:
            outcome = command(client, args)
    except ModelpoolError as exc:
        field = f" (field {exc.field})" if exc.field else ""
        code = 2 if 400 <= exc.status < 500 else 1
        code = _report(f"{exc.message}{field}", code)
        if exc.status == 401:
            print(f"hint: pass --token, or set {env_name('management_token')}, or {HOME_ENV} to the cluster's home",
                  file=sys.stderr)
        return code
    except requests.Timeout:
        return _report(f"no answer from {url} within {args.timeout:g}s; raise --timeout or check --url", 1)
    except requests.RequestException as exc:
        return _report(f"cannot reach {url} ({type(exc).__name__}); is the cluster running? check --url "
                       f"(or ${URL_ENV})", 1)
    except CommandError as exc:
        return _report(str(exc), exc.code)
    except TimeoutError as exc:
        return _report(f"{exc} (--wait-timeout)", 1)
    except KeyboardInterrupt:
        return _report("interrupted", 130)
    if args.json:
        print(json.dumps(outcome.data, indent=2))
    elif outcome.text:
        print(outcome.text)
    return outcome.code
