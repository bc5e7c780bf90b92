"""The ``modelpool`` command: start, stop and inspect a cluster; build model archives; manage it remotely."""
from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from cluster import runtime
from cluster.net import is_loopback_host
from cluster.settings import Settings, SettingsError, add_settings_arguments, check_exposure, settings_from_args

EXAMPLE_REQUEST = '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}'


def _http_ready(url: str, timeout_s: float) -> None:
    """Wait until the ingress answers /v2/health/ready with 200 (HAProxy learns routes a bit after Serve)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url}/v2/health/ready not ready after {timeout_s:.0f}s ({last})")


#: Serve's gRPC ingress registers V2's GRPCInferenceService from this (deployments/protos/service.py).
GRPC_SERVICER_FUNCTION = "deployments.protos.service.add_inference_servicer_to_server"


def management_token(settings: Settings) -> str:
    """The configured token, else the one saved in HOME, else a new one saved there (mode 0600)."""
    if settings.management_token:
        return settings.management_token
    path = settings.token_path
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token)
    return token


def deploy_management(settings: Settings, token: str) -> None:
    """The management app restores or registers every model itself; this only starts it."""
    from ray import serve
    from ray.serve.api import RunTarget

    from management.serve_configs import MANAGEMENT_APP
    from management.serve_entrypoint import build_management

    serve.run_many([RunTarget(target=build_management(settings, token), name=MANAGEMENT_APP, route_prefix="/")],
                   wait_for_applications_running=False)


def cmd_start(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    check_exposure(settings)  # before anything starts: a refused start leaves nothing behind
    settings.home_path.mkdir(parents=True, exist_ok=True)
    settings.model_store_path.mkdir(parents=True, exist_ok=True)
    if settings.examples:
        from deployments.examples import build_examples

        build_examples(settings.model_store_path)
    started_here = not settings.address
    started = time.monotonic()
    if started_here:
        print(f"starting a local Ray head on 127.0.0.1:{settings.ray_port} ...", flush=True)
        address = runtime.start_local_head(settings)
    else:
        address = settings.address
    runtime.write_state(settings, {"address": address, "started_here": started_here, "url": settings.http_url})
    try:
        token = management_token(settings)
        runtime.connect(address)
        runtime.start_serve(settings, [GRPC_SERVICER_FUNCTION])
        deploy_management(settings, token)
        _http_ready(settings.http_url, settings.start_timeout_s)
    except BaseException:
        print("start failed; stopping what was started", file=sys.stderr)
        _stop(settings)
        raise
    _print_banner(settings, time.monotonic() - started)
    if args.block:
        _block_until_signal()
        _stop(settings)
    return 0


def _print_banner(settings: Settings, elapsed_s: float) -> None:
    from ray import serve

    from management.serve_configs import parse_app_name

    models: dict[str, list[str]] = {}
    for name in serve.status().applications:
        parsed = parse_app_name(name)
        if parsed:
            models.setdefault(parsed[0], []).append(parsed[1])
    print("\n".join(banner_lines(settings, models, elapsed_s)))


def banner_lines(settings: Settings, models: dict[str, list[str]], elapsed_s: float) -> list[str]:
    """What ``start`` prints: where to send requests, and where the token is, never the token itself."""
    url = settings.http_url
    lines = [f"modelpool is serving on {url} (ready in {elapsed_s:.0f}s)"]
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
    lines.append("  stop:    modelpool stop")
    return lines


def _block_until_signal() -> None:
    stop = {"now": False}

    def handler(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop["now"]:
        time.sleep(0.5)


def _stop(settings: Settings) -> None:
    state = runtime.read_state(settings) or {"started_here": not settings.address, "address": settings.address}
    if state.get("started_here", True):
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        runtime.stop_local_head()
    else:
        runtime.connect(state["address"])
        from ray import serve

        serve.shutdown()
    runtime.state_path(settings).unlink(missing_ok=True)


def cmd_stop(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    _stop(settings)
    print("modelpool stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    state = runtime.read_state(settings)
    if state is None and not settings.address:
        print("modelpool is not running (no cluster state in " + str(runtime.state_path(settings)) + ")")
        return 1
    address = settings.address or state["address"]
    try:
        runtime.connect(address)
    except Exception as exc:  # noqa: BLE001 - report, not crash
        print(f"cannot reach Ray at {address}: {exc}")
        return 1
    from ray import serve

    from management.workers import status_name

    status = serve.status()
    rows = {name: {"status": status_name(app.status), "deployments": {d: {"status": status_name(s.status), "replicas": s.replica_states}
                                                              for d, s in app.deployments.items()}}
            for name, app in status.applications.items()}
    if args.json:
        print(json.dumps({"address": address, "url": (state or {}).get("url", settings.http_url), "applications": rows}, indent=2))
    else:
        print(f"Ray at {address}; HTTP at {(state or {}).get('url', settings.http_url)}")
        for name, row in sorted(rows.items()):
            replicas = sum(sum(d["replicas"].values()) for d in row["deployments"].values())
            print(f"  {name:<32} {row['status']:<10} replicas={replicas}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from deployments.examples import archive_command

    out = archive_command(name=args.name, version=args.version, handler=args.handler, files=[Path(f) for f in args.file],
                          out=Path(args.out) if args.out else None, model_file=args.model_file, description=args.description)
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
    archive.add_argument("--out", default=None, help="output zip (default: NAME-VERSION.zip in the current directory)")
    archive.set_defaults(func=cmd_archive)

    from modelpool.remote_parser import add_remote_commands

    add_remote_commands(commands)  # models, pools, services, batches: the HTTP API through the client
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
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not dump tracebacks
        from deployments.errors import RequestError

        if isinstance(exc, RequestError):
            print(f"modelpool: {exc.message}" + (f" (field {exc.field})" if exc.field else ""), file=sys.stderr)
            return 2
        print(f"modelpool: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
