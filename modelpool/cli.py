"""The ``modelpool`` command: start, stop and inspect a cluster; build model archives; manage it remotely."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

from modelpool.cluster import local_cluster, runtime
from modelpool.cluster.net import is_loopback_host
from modelpool.cluster.paths import state_path
from modelpool.cluster.pidfile import PidfileError
from modelpool.cluster.start_checks import StartRefused
from modelpool.cluster.settings import Settings, SettingsError, add_settings_arguments, settings_from_args

EXAMPLE_REQUEST = '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}'

#: Serve's gRPC ingress registers V2's GRPCInferenceService from this (deployments/protos/service.py).
GRPC_SERVICER_FUNCTION = "modelpool.deployments.protos.service.add_inference_servicer_to_server"


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_start(args: argparse.Namespace) -> int:
    settings = local_cluster.fit_to_machine(settings_from_args(args))
    local_cluster.prepare_home(settings, block=args.block)
    examples: Optional[Future] = None
    if settings.examples:
        from modelpool.deployments.examples import build_examples

        # trained while `ray start` and Serve come up (seconds of CPU each, the one mostly waiting on the other's
        # subprocesses); management registers the store's archives, so they are all there before it is deployed
        examples = ThreadPoolExecutor(1, thread_name_prefix="examples").submit(build_examples, settings.model_store_path)
    from modelpool.management.serve_entrypoint import deploy_management  # imports Ray: only when starting

    def deploy(token: str) -> None:
        if examples is not None:
            examples.result()  # a failed build fails the start (which then stops what it started)
        deploy_management(settings, token)

    started = time.monotonic()
    local_cluster.start(settings, deploy, [GRPC_SERVICER_FUNCTION], progress=_say, block=args.block)
    ray_address = (local_cluster.read_state(settings.home_path) or {}).get("address")
    _print_banner(settings, time.monotonic() - started, ray_address)
    if args.block:
        local_cluster.wait_for_signal()
        local_cluster.stop(settings)
    return 0


def _print_banner(settings: Settings, elapsed_s: float, ray_address: Optional[str]) -> None:
    from modelpool.deployments.app_names import parse_app_name
    from modelpool.management.serve_state import applications

    models: dict[str, list[str]] = {}
    for name in applications():
        parsed = parse_app_name(name)
        if parsed:
            models.setdefault(parsed[0], []).append(parsed[1])
    print("\n".join(banner_lines(settings, models, elapsed_s, ray_address)))


def banner_lines(settings: Settings, models: dict[str, list[str]], elapsed_s: float,
                 ray_address: Optional[str] = None) -> list[str]:
    """What ``start`` prints: where to send requests, and where the token is, never the token itself.

    Every address is one the cluster listens on (tests/integration/test_start_errors.py checks them against the
    sockets); a wildcard bind is said as such beside the loopback address that reaches it from here."""
    url = settings.http_url
    wide = f"; bound to {settings.http_host}, every interface" if settings.http_host in ("0.0.0.0", "::") else ""
    lines = [f"modelpool is serving on {url} (ready in {elapsed_s:.0f}s{wide})"]
    for name, versions in sorted(models.items()):
        lines.append(f"  model {name} (versions {', '.join(sorted(versions))}): {url}/v2/models/{name}/infer")
    lines.append("  health:  curl -s " + f"{url}/v2/health/ready")
    if settings.grpc_enabled:
        lines.append(f"  gRPC:    {settings.grpc_target} (V2 inference.GRPCInferenceService, e.g. "
                     f"tritonclient.grpc.InferenceServerClient('{settings.grpc_target}'))")
    if settings.management_token:
        lines.append(f"  manage:  curl -s -H 'Authorization: Bearer <your token>' {url}/models")
    else:
        lines.append(f"  token:   {settings.token_path} (generated, readable by you only)")
        lines.append(f"  manage:  curl -s -H \"Authorization: Bearer $(cat {settings.token_path})\" {url}/models")
    auth = " -H 'Authorization: Bearer <inference token>'" if settings.inference_token else ""
    if "iris" in models:
        lines.append(f"  infer:   curl -s {url}/v2/models/iris/infer{auth} -H 'content-type: application/json' "
                     f"-d '{EXAMPLE_REQUEST}'")
    if not settings.inference_token and not is_loopback_host(settings.http_host):
        lines.append(f"  note:    inference is open to anyone who reaches {settings.http_host}:{settings.http_port}; "
                     "--inference-token puts it behind a token")
    if ray_address:
        lines.append(f"  Ray:     {ray_address} (modelpool status lists what runs there)")
    lines.append("  stop:    modelpool stop")
    return lines


def cmd_stop(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    local_cluster.stop(settings)
    print("modelpool stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    state = local_cluster.read_state(settings.home_path)
    if state is None and not settings.address:
        print("modelpool is not running (no cluster state in " + str(state_path(settings.home_path)) + ")")
        return 1
    address = settings.address or state["address"]
    try:
        runtime.connect(address)
    except Exception as exc:  # noqa: BLE001 - report, not crash
        print(f"cannot reach Ray at {address}: {exc}")
        return 1
    from modelpool.management.serve_state import application_rows, serve_details

    rows = application_rows(serve_details())
    if args.json:
        print(json.dumps({"address": address, "url": (state or {}).get("url", settings.http_url), "applications": rows}, indent=2))
    else:
        print(f"Ray at {address}; HTTP at {(state or {}).get('url', settings.http_url)}")
        for name, row in sorted(rows.items()):
            replicas = sum(sum(d["replicas"].values()) for d in row["deployments"].values())
            print(f"  {name:<32} {row['status']:<10} replicas={replicas}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from modelpool.deployments.examples import archive_command

    out = archive_command(name=args.name, version=args.version, handler=args.handler, files=[Path(f) for f in args.file],
                          out=Path(args.out) if args.out else None, model_file=args.model_file, description=args.description,
                          service_type=args.service_type, parameters=args.parameters)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelpool", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start (or join) a cluster and serve the model store")
    add_settings_arguments(start)
    start.add_argument("--block", action="store_true", help="stay in the foreground until SIGINT/SIGTERM, then stop")
    start.set_defaults(func=cmd_start)

    stop = commands.add_parser("stop", help="stop what `modelpool start` started, haproxy included")
    add_settings_arguments(stop)
    stop.set_defaults(func=cmd_stop)

    status = commands.add_parser("status", help="applications and replicas of the running cluster")
    add_settings_arguments(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    archive = commands.add_parser("archive", help="build a model archive (zip with MANIFEST.json), like torch-model-archiver")
    archive.add_argument("--name", required=True)
    archive.add_argument("--version", default="1")
    archive.add_argument("--handler", required=True, help="'sklearn' or 'module:attr' (module is a .py file among --file)")
    archive.add_argument("--model-file", default=None, help="the serialized model (for the sklearn handler)")
    archive.add_argument("--file", action="append", default=[], help="a file to include; repeat for several")
    archive.add_argument("--description", default="")
    archive.add_argument("--service-type", default="MODEL", help="Seldon's: the handler's role in an inference graph "
                         "(MODEL, TRANSFORMER, ROUTER, COMBINER, OUTLIER_DETECTOR)")
    archive.add_argument("--parameters", default=None, help="Seldon's: a JSON list of {name, type, value} handed "
                         "to the handler class's constructor")
    archive.add_argument("--out", default=None, help="output zip (default: NAME-VERSION.zip in the current directory)")
    archive.set_defaults(func=cmd_archive)

    from modelpool.remote_parser import add_remote_commands

    add_remote_commands(commands)  # models, graphs, pools, services, batches: the HTTP API through the client
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"modelpool: bad setting: {exc}", file=sys.stderr)
        return 2
    except (PidfileError, StartRefused) as exc:  # refused before anything started: the message says why and what to do
        print(f"modelpool: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a CLI reports in one line; --debug shows the traceback
        from modelpool.deployments.errors import RequestError

        if isinstance(exc, RequestError):
            print(f"modelpool: {exc.message}" + (f" (field {exc.field})" if exc.field else ""), file=sys.stderr)
            return 2
        if not hasattr(args, "debug"):  # the remote commands: the client's errors are one line already
            print(f"modelpool: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        if _debug(args):
            traceback.print_exc()
        print(f"modelpool: {one_line(exc)}" + ("" if _debug(args) else " (--debug shows the whole error)"),
              file=sys.stderr)
        return 1


def one_line(exc: BaseException) -> str:
    """The error's cause in one line: the exception a Ray call wrapped (a ``RayTaskError``'s ``cause``; modelpool's
    own errors are written for the user and kept), and the first line of its message, which names what failed."""
    ray_exceptions = sys.modules.get("ray.exceptions")  # not imported: the error cannot be Ray's
    while ray_exceptions is not None and isinstance(exc, ray_exceptions.RayTaskError) \
            and isinstance(exc.cause, BaseException) and exc.cause is not exc:
        exc = exc.cause
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _debug(args: argparse.Namespace) -> bool:
    """--debug (or MODELPOOL_DEBUG) for the commands that take the settings."""
    if not hasattr(args, "debug"):
        return False
    try:
        return settings_from_args(args).debug
    except SettingsError:
        return bool(args.debug)


if __name__ == "__main__":
    sys.exit(main())
