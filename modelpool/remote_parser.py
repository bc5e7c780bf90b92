"""The command line of the remote ``modelpool`` commands: ``models``, ``graphs``, ``pools``, ``services``, ``batches``.

Only argparse: which actions there are, their arguments, defaults and help. What each action does
is :mod:`modelpool.remote`'s; every action runs through :func:`modelpool.remote.run` on one client
session, so errors and exit codes are the same for all of them.
"""
from __future__ import annotations

import argparse
from typing import Callable

from modelpool.cluster.paths import HOME_ENV, TOKEN_FILE
from modelpool.cluster.settings import DEFAULT_RESPONSE_TIMEOUT_S, DEFAULT_STARTUP_TIMEOUT_S, env_name
from modelpool.client import DEFAULT_URL
from modelpool.remote import (URL_ENV, batches_artifacts, batches_cancel, batches_download, batches_list,
                              batches_results, batches_start, batches_status, batches_wait, graphs_delete, graphs_get,
                              graphs_list, graphs_put, models_describe, models_list, models_register, models_scale,
                              models_set_default, models_unregister, pools_delete, pools_list, pools_set, pools_status,
                              run, services_list, services_predict)


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help=f"the cluster's HTTP address [env {URL_ENV}; else the URL `modelpool start` saved; "
                             f"else {DEFAULT_URL}]")
    common.add_argument("--token", default=None,
                        help=f"management token [default: {env_name('management_token')}, else {HOME_ENV}/{TOKEN_FILE}]")
    common.add_argument("--json", action="store_true", help="print the server's JSON (indented) and nothing else on stdout")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request (60)")
    return common


def _waiting(parser: argparse.ArgumentParser, default_timeout: float, flag: bool = True) -> None:
    if flag:
        parser.add_argument("--wait", action="store_true", help="wait until done, with a progress bar on a terminal")
    parser.add_argument("--wait-timeout", type=float, default=default_timeout,
                        help=f"seconds to wait at most ({default_timeout:g})")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls (0.5)")


def _max_queued(parser: argparse.ArgumentParser, default_text: str) -> None:
    parser.add_argument("--max-queued-requests", type=int, default=None, metavar="N",
                        help="calls that may wait at a worker beyond those it runs; past them a call gets 429 with "
                             f"Retry-After at once (-1: no limit, 0: none wait; {default_text})")


def _batch_labels(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--service", default=None, help=help_text)
    parser.add_argument("--version", default=None, help=help_text)


def add_remote_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``models``, ``graphs``, ``pools``, ``services`` and ``batches`` on the ``modelpool`` parser."""
    common = _common()

    def group(name: str, help_text: str) -> argparse._SubParsersAction:
        parser = commands.add_parser(name, help=help_text)
        return parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def leaf(actions: argparse._SubParsersAction, name: str, command: Callable, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, parents=[common], help=help_text, description=help_text)
        parser.set_defaults(func=lambda args: run(command, args))
        return parser

    models = group("models", "register, describe, scale and remove models (management API)")
    leaf(models, "list", models_list, "every model version: default, workers, status, URL "
                                      "(--json: the models of GET /models, every page)")
    p = leaf(models, "describe", models_describe, "one version, the default, or 'all' versions, with workers")
    p.add_argument("name")
    p.add_argument("version", nargs="?", default=None, help="a version or 'all' (default: the default version)")
    p = leaf(models, "register", models_register, "register an archive of the model store or an allowed URL")
    p.add_argument("model_url", metavar="URL")
    p.add_argument("--model-name", default=None)
    p.add_argument("--handler", default=None, help="overrides the archive manifest's handler, checked like it: "
                   "'module:function' or 'module:Class' of a file in the archive ('module', 'module.py' also), or 'sklearn'")
    p.add_argument("--runtime", default="python", choices=["python"], help="the only runtime is python")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-batch-delay", type=float, default=None, help="milliseconds")
    p.add_argument("--initial-workers", type=int, default=0, help="0: served by the generic pool")
    p.add_argument("--synchronous", action="store_true", help="answer once the workers run")
    p.add_argument("--response-timeout", type=float, default=None,
                   help=f"seconds an inference may take (default {DEFAULT_RESPONSE_TIMEOUT_S:g}): past it, 504 and the "
                        "replica is replaced")
    p.add_argument("--startup-timeout", type=float, default=None, help="seconds the server waits when --synchronous")
    _max_queued(p, "default: the server's --max-queued-requests")
    p = leaf(models, "scale", models_scale,
             "change workers, batching or the queue limit of a version (the default when omitted)")
    p.add_argument("name")
    p.add_argument("version", nargs="?", default=None)
    p.add_argument("--min-worker", type=int, default=None)
    p.add_argument("--max-worker", type=int, default=None)
    p.add_argument("--number-gpu", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-batch-delay", type=float, default=None, help="milliseconds")
    _max_queued(p, "applied to the running workers, no restart; default: unchanged")
    _waiting(p, DEFAULT_STARTUP_TIMEOUT_S)  # a scale's workers start within the model's startup_timeout
    p = leaf(models, "unregister", models_unregister, "remove a version (the default when omitted)")
    p.add_argument("name")
    p.add_argument("version", nargs="?", default=None)
    p = leaf(models, "set-default", models_set_default, "make a version the one /v2/models/NAME serves")
    p.add_argument("name")
    p.add_argument("version")

    graphs = group("graphs", "inference graphs in Seldon Core's shape, served at /v2/models/NAME (management API)")
    p = leaf(graphs, "put", graphs_put, "create or replace a graph; answers once it serves")
    p.add_argument("name")
    p.add_argument("file", metavar="FILE", help='JSON: the root node, or {"graph": root}; - reads stdin')
    leaf(graphs, "list", graphs_list, "every graph: status, node count, endpoint")
    for name, command, help_text in (("get", graphs_get, "one graph: its status, endpoint and nodes"),
                                     ("delete", graphs_delete, "stop serving a graph (refused while another calls it)")):
        p = leaf(graphs, name, command, help_text)
        p.add_argument("name")

    pools = group("pools", "dedicated session pools of services")
    leaf(pools, "list", pools_list, "services that have a dedicated pool")
    for name, command, help_text in (("set", pools_set, "create or resize a version's dedicated pool"),
                                     ("status", pools_status, "per-node status of a version's pool"),
                                     ("delete", pools_delete, "back to the generic pool (harmless when repeated)")):
        p = leaf(pools, name, command, help_text)
        p.add_argument("name")
        p.add_argument("version")
        if name == "set":
            p.add_argument("--initial-pool-size", type=int, required=True)
            p.add_argument("--max-pool-size", type=int, required=True)

    services = group("services", "list services and score rows online")
    leaf(services, "list", services_list, "every service: version, default, pool, state")
    p = leaf(services, "predict", services_predict, "score rows with /predict")
    p.add_argument("name")
    p.add_argument("version", nargs="?", default=None, help="default: the default version")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--rows", default=None, help="JSON rows, e.g. '[[5.1,3.5,1.4,0.2]]'")
    source.add_argument("--csv", default=None, metavar="FILE", help="CSV or TSV rows (a header line is skipped)")

    batches = group("batches", "batch scoring jobs")
    p = leaf(batches, "start", batches_start, "score a CSV or JSON file of rows as a batch job")
    p.add_argument("name")
    p.add_argument("version")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", default=None, metavar="FILE", help="CSV or TSV with a header: rows as {column: value}")
    source.add_argument("--json-file", default=None, metavar="FILE",
                        help="a JSON list of rows (lists or {column: value} objects)")
    p.add_argument("--parallel-count", type=int, default=10)
    _waiting(p, 600.0)
    for name, command, help_text in (("status", batches_status, "state and row counts of a job"),
                                     ("results", batches_results, "the rows scored so far"),
                                     ("cancel", batches_cancel, "stop scheduling rows; scored rows stay readable"),
                                     ("wait", batches_wait, "wait until the job ends, with a progress bar on a terminal"),
                                     ("artifacts", batches_artifacts, "the artifact names of one row"),
                                     ("download", batches_download, "write a row's artifacts into --dest")):
        p = leaf(batches, name, command, help_text)
        p.add_argument("execution_id", metavar="ID")
        if name in ("artifacts", "download"):
            p.add_argument("index", type=int, metavar="INDEX")
        if name == "download":
            p.add_argument("--name", default=None, help="one artifact (default: every artifact of the row)")
            p.add_argument("--dest", required=True, help="directory to write into")
        if name == "wait":
            _waiting(p, 600.0, flag=False)
        _batch_labels(p, "optional: the execution id alone names the job")
    p = leaf(batches, "list", batches_list, "execution ids, oldest first")
    _batch_labels(p, "only the jobs of this service / version")
