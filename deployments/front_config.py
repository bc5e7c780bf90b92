"""The front's HAProxy configuration and routing maps, as text: pure, so a real HAProxy checks it in unit tests.

What the front does with them (listening, swapping maps, probing ports) is ``modelpool.deployments.front``'s.
Two maps drive the routing: ``name/version -> app`` (``render_map``; ``name/`` is the default version)
and ``app@slot -> host|port`` (``port_slots``), the replica ports registered for an app, which take
turns over ``PORT_SLOTS`` slots so a random slot picks a replica.

A third map sheds load (``app_limits``): ``app -> calls in flight`` that the app's registered replicas may hold
between them (each its ``max_ongoing_requests`` running plus ``max_queued_requests`` waiting). HAProxy counts
a model's calls in flight to its replica ports (a stick table's trackers, keyed by app) and answers the one past
the limit itself: 429 with ``Retry-After`` (RESOURCE_EXHAUSTED over gRPC), in microseconds and before any
replica reads it. The replica's own gate (``admission``) refused too late under a flood: the backlog formed
in socket buffers before its event loop could count it (BENCHMARKS.md, "Overload"). Each refusal is counted
in a second table (``SHED_TABLES``), which the front reads into the metrics.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from modelpool.deployments.admission import LIMIT_FIELD
from modelpool.deployments.codecs import kserve_v1, torchserve
from modelpool.deployments.replica_port import MAX_CALLS_PER_CONNECTION

SERVICE_PATH = "/inference.GRPCInferenceService/"
MODEL_CALLS = ("ModelInfer", "ModelReady", "ModelMetadata")  # their field 1 and 2 name the model and version
COMPRESSED_MESSAGE = ("compressed requests are not supported: the model name must be readable from the message; "
                      "send it uncompressed (the default of V2 clients)")
STARTING_MESSAGE = "the model is loading (its replicas are starting or being replaced); retry shortly"
PORT_SLOTS = 60  # map entries per app: replicas share them evenly for any count that divides 60 (1-6, 10, 12...)
PORT_GONE_MESSAGE = "the replica chosen for this call stopped; retry (the front has dropped it or will within a second)"
MODEL_PATH_PREFIX = "/v2/models/"
REST_UNAVAILABLE_MESSAGE = ("no replica of this model could take the request (its replicas are being replaced); "
                            "retry after the Retry-After seconds")
LOAD_TABLE = "app_load"  # calls in flight to replica ports, by app: its trackers are the count
SHED_TABLES = {"rest": "shed_rest", "grpc": "shed_grpc"}  # refusals by app (gpc0), per protocol
#: A refusal, in HAProxy's log-format (the model's name and the app's limit filled in per call). Names and
#: versions are checked at register (letters, digits, ``_.-``), and only a routed (registered) name is refused.
FRONT_REFUSAL = ("model '%[var(txn.model_name)]' is at its limit: %[var(txn.limit)] calls in flight on its replicas "
                 f"(max_ongoing_requests running and {LIMIT_FIELD} waiting on each); retry after the Retry-After "
                 f"seconds, or add workers (scale max_worker) or raise {LIMIT_FIELD}")
REST_TIMEOUT_MESSAGE = ("the model did not answer within the request timeout of the server (--request-timeout-s); "
                        "retry, or raise the timeout")
#: Serve's HAProxy answers a bare ``500 Internal Server Error`` (text/plain) when the replica it chose for a request
#: could not answer: its own 502, 503 and 504 are rewritten to that one page (Serve's ``haproxy_templates``).
SERVE_LOST_MESSAGE = ("the replica that took this request was lost before it answered (a replica or a node stopped); "
                      "retry after the Retry-After seconds. A read was already retried; a change may have been "
                      "applied, so read the state before sending it again")
SERVE_RETRIED_STATUSES = "500 502 503 504"


def route_key(name: str, version: str = "") -> str:
    """The map key of a call: ``name/`` for the default version, ``name/version`` for one."""
    return f"{name}/{version}"


def render_map(routes: Mapping[str, str]) -> str:
    """HAProxy map file: one ``key app`` per line (model names and versions hold no whitespace)."""
    return "".join(f"{key} {app}\n" for key, app in sorted(routes.items()))


def port_slots(ports: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The ports map: ``app@k -> host|port`` for k < PORT_SLOTS, the app's replicas taking turns."""
    slots: dict[str, str] = {}
    for app, replicas in ports.items():
        addresses = sorted(replicas.values())
        for k in range(PORT_SLOTS if addresses else 0):
            host, _, port = addresses[k % len(addresses)].rpartition(":")
            slots[f"{app}@{k}"] = f"{host.strip('[]')}|{port}"
    return slots


def app_limits(ports: Mapping[str, Mapping[str, str]], per_replica: Mapping[str, int]) -> dict[str, str]:
    """The limits map: ``app -> calls in flight`` over the app's registered ports, for apps with a limit (> 0).

    Only calls the front sends to a replica port are counted, so only apps with ports get a limit; a call that
    goes through Serve's path meets Serve's own queue limit there.
    """
    return {app: str(per_replica[app] * len(replicas)) for app, replicas in ports.items()
            if replicas and per_replica.get(app, 0) > 0}


def read_shed_counts(table_dump: str) -> dict[str, int]:
    """``app -> refusals so far`` from HAProxy's ``show table`` answer (a line per key: ``key=... gpc0=N``)."""
    counts: dict[str, int] = {}
    for line in table_dump.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "key" in fields and "gpc0" in fields:
            counts[fields["key"]] = int(fields["gpc0"])
    return counts


@dataclass(frozen=True)
class Listeners:
    """Where the front listens, and the Serve ingresses it passes on to what no replica port takes.

    A port of 0 has no listener: ``http_port`` 0 when Serve's HTTP ingress keeps the public port
    itself (a RayService started by KubeRay), ``grpc_port`` 0 when gRPC is off.
    """

    host: str
    http_port: int = 0
    http_upstream: str = ""
    grpc_port: int = 0
    grpc_upstream: str = ""
    keep_alive_s: int = 90
    timeout_s: int = 300

    def ports(self) -> list[int]:
        return [port for port in (self.http_port, self.grpc_port) if port]


def _error(status: int, message: str) -> str:
    """An ``http-error`` line answering in modelpool's error shape (single quotes: HAProxy takes the JSON as is)."""
    return (f"http-error status {status} content-type application/json hdr Retry-After 1 "
            f"string '{_quotable_json(message, 'model_name')}'")


def _quotable_json(message: str, field: str) -> str:
    """modelpool's error body, for HAProxy's single-quoted ``string`` argument (which takes the JSON as is)."""
    body = json.dumps({"error": message, "field": field})
    if "'" in body:
        raise ValueError(f"an HAProxy answer body cannot hold a single quote: {body}")
    return body


def _serve_lost_rules() -> str:
    """Serve's bare 500 for a lost replica: a read is sent again (Serve's HAProxy then picks a replica that answers),
    and whatever still gets it is answered in modelpool's shape, as the retryable 503 it is.

    Serve answers a bare 500 for nothing else that reaches it from the front: management answers its own errors
    in JSON (``management.api``), and so do the generic pool and the protocol fronts. A change (POST, PUT,
    DELETE) is not sent twice: it may have been applied before the replica was lost.
    """
    body = _quotable_json(SERVE_LOST_MESSAGE, "request")
    return f"""retry-on conn-failure empty-response {SERVE_RETRIED_STATUSES}
    http-request disable-l7-retry unless METH_GET
    http-response return status 503 content-type application/json hdr Retry-After 1 string '{body}' if {{ status 500 }} {{ res.hdr(content-type) -m beg text/plain }}"""


def _shed_rules(limits_path: Path, protocol: str, refusal: str, condition: str) -> str:
    """Count a routed call in flight to its app's replicas; past the app's limit, count and answer ``refusal``."""
    return f"""
    # load shedding: the app's calls in flight (this one included) against its replicas' limit
    http-request set-var(txn.limit) var(txn.app),map_str_int({limits_path}) if {condition}
    http-request track-sc0 var(txn.app) table {LOAD_TABLE} if {{ var(txn.limit) -m found }}
    acl over_limit sc0_trackers({LOAD_TABLE}),sub(txn.limit) gt 0
    http-request track-sc1 var(txn.app) table {SHED_TABLES[protocol]} if {{ var(txn.limit) -m found }} over_limit
    http-request sc-inc-gpc0(1) if {{ var(txn.limit) -m found }} over_limit
    {refusal} if {{ var(txn.limit) -m found }} over_limit"""


def _tables() -> str:
    """The stick tables of load shedding (a backend holds a table; no server, no traffic)."""
    text = f"""
backend {LOAD_TABLE}
    stick-table type string len 160 size 10k
"""
    for table in SHED_TABLES.values():
        text += f"""
backend {table}
    stick-table type string len 160 size 10k store gpc0
"""
    return text


def _http_section(listeners: Listeners, bind_host: str, map_path: Path, ports_path: Path, limits_path: Path) -> str:
    refusal_body = json.dumps({"error": FRONT_REFUSAL, "field": LIMIT_FIELD}).replace('"', '\\"')
    refusal = (f"http-request return status 429 content-type application/json hdr Retry-After 1 "
               f'lf-string "{refusal_body}"')
    return f"""
frontend http
    bind {bind_host}:{listeners.http_port}
    # the model a path names, "name/version" finding its app: V2 /v2/models/{{name}}[/versions/{{version}}][/action],
    # TorchServe /predictions/{{name}}[/{{version}}], KServe V1 /v1/models/{{name}}[/versions/{{version}}][:verb]
    acl v2_path path_beg {MODEL_PATH_PREFIX}
    acl torchserve_path path_beg {torchserve.ROUTE_PREFIX}/
    acl kserve_v1_path path_beg {kserve_v1.ROUTE_PREFIX}/models/
    http-request set-var(txn.model_name) path,field(4,/) if v2_path
    http-request set-var(txn.model_version) path,field(6,/) if v2_path {{ path,field(5,/) -m str versions }}
    http-request set-var(txn.model_name) path,field(3,/) if torchserve_path
    http-request set-var(txn.model_version) path,field(4,/) if torchserve_path
    http-request set-var(txn.model_name) path,field(4,/),field(1,:) if kserve_v1_path
    http-request set-var(txn.model_version) path,field(6,/),field(1,:) if kserve_v1_path {{ path,field(5,/) -m str versions }}
    http-request set-var(txn.route) var(txn.model_name),concat(/,txn.model_version) if {{ var(txn.model_name) -m found }}
    http-request set-var(txn.app) var(txn.route),map_str({map_path}) if {{ var(txn.route) -m found }}
    http-request set-var(txn.slot) rand({PORT_SLOTS}) if {{ var(txn.app) -m found }}
    http-request set-var(txn.port) var(txn.app),concat(@,txn.slot),map_str({ports_path}) if {{ var(txn.app) -m found }}
    {_shed_rules(limits_path, "rest", refusal, "METH_POST { var(txn.port) -m found }").strip()}
    use_backend replica_rest if {{ var(txn.port) -m found }}
    default_backend serve_http

backend serve_http
    http-reuse always
    {_serve_lost_rules()}
    server serve {listeners.http_upstream}

backend replica_rest
    # the chosen port first; one that refuses the connection (its replica died) sends the request to Serve
    balance first
    http-reuse always
    http-request set-dst var(txn.port),field(1,|)
    http-request set-dst-port var(txn.port),field(2,|)
    server replica 0.0.0.0:0
    server serve {listeners.http_upstream}
    {_error(503, REST_UNAVAILABLE_MESSAGE)}
    {_error(504, REST_TIMEOUT_MESSAGE)}
"""


def _grpc_section(listeners: Listeners, bind_host: str, map_path: Path, ports_path: Path, limits_path: Path,
                  management_app: str, pool_app: str) -> str:
    calls = " ".join(SERVICE_PATH + call for call in MODEL_CALLS)
    refusal = (f'http-request return status 200 content-type application/grpc hdr grpc-status 8 '
               f'hdr grpc-message "{FRONT_REFUSAL}"')
    return f"""
frontend v2_grpc
    bind {bind_host}:{listeners.grpc_port} proto h2
    # the message must be in the buffer to read fields 1 and 2 (the first bytes of it: the rest may follow)
    option http-buffer-request
    acl model_call path {calls}
    acl infer_call path {SERVICE_PATH}ModelInfer
    # a compressed message (flag byte 1) cannot be read for its model name: say so rather than misroute it
    acl compressed req.body,bytes(0,1),hex -m str 01
    http-request return status 200 content-type application/grpc hdr grpc-status 12 hdr grpc-message "{COMPRESSED_MESSAGE}" if model_call compressed
    http-request set-var(txn.app) str({pool_app}) if model_call
    http-request set-var(txn.model_name) req.body,bytes(5),protobuf(1) if model_call
    http-request set-var(txn.model_version) req.body,bytes(5),protobuf(2) if model_call
    http-request set-var(txn.route) var(txn.model_name),concat(/,txn.model_version) if model_call
    http-request set-var(txn.app) var(txn.route),map_str({map_path},{pool_app}) if model_call {{ var(txn.route) -m found }}
    http-request set-var(txn.app) str({management_app}) unless model_call
    http-request set-header application %[var(txn.app)]
    # Serve answers NOT_FOUND "Application '...' not found" while an application this front routes to has
    # no running replica yet (a model loading or being replaced): V2 clients expect UNAVAILABLE, retryable
    acl app_missing res.hdr(grpc-message) -m beg Application
    http-response set-var(txn.starting) bool(true) if {{ res.hdr(grpc-status) -m str 5 }} app_missing
    http-response set-header grpc-message "{STARTING_MESSAGE}" if {{ var(txn.starting) -m bool }}
    http-response set-header grpc-status 14 if {{ var(txn.starting) -m bool }}
    # a replica that died under the call (killed: its port refused, and Serve's path still sent the call there):
    # Serve answers CANCELLED, which a client that did not cancel must read as UNAVAILABLE, retryable
    http-response set-var(txn.replica_gone) bool(true) if {{ res.hdr(grpc-status) -m str 1 }}
    http-response set-header grpc-message "{PORT_GONE_MESSAGE}" if {{ var(txn.replica_gone) -m bool }}
    http-response set-header grpc-status 14 if {{ var(txn.replica_gone) -m bool }}
    # an app whose replicas registered ports of their own: straight to one of them
    http-request set-var(txn.slot) rand({PORT_SLOTS}) if model_call
    http-request set-var(txn.port) var(txn.app),concat(@,txn.slot),map_str({ports_path}) if model_call
    {_shed_rules(limits_path, "grpc", refusal, "infer_call { var(txn.port) -m found }").strip()}
    use_backend replica_grpc if {{ var(txn.port) -m found }}
    default_backend serve_grpc

backend serve_grpc
    http-reuse always
    server serve {listeners.grpc_upstream} proto h2

backend replica_grpc
    balance first
    http-reuse always
    http-request set-dst var(txn.port),field(1,|)
    http-request set-dst-port var(txn.port),field(2,|)
    # max-reuse: a connection is retired before the replica's HTTP/2 stack would drop it (replica_port.py)
    server replica 0.0.0.0:0 proto h2 max-reuse {MAX_CALLS_PER_CONNECTION}
    server serve {listeners.grpc_upstream} proto h2
    http-error status 503 content-type application/grpc hdr grpc-status 14 hdr grpc-message "{PORT_GONE_MESSAGE}"
"""


def render_config(listeners: Listeners, *, workers: int, map_path: Path, socket_path: Path, ports_path: Path,
                  limits_path: Path, management_app: str, pool_app: str) -> str:
    """The front's whole configuration (pure: unit-tested against a real HAProxy)."""
    bind_host = f"[{listeners.host}]" if ":" in listeners.host else listeners.host
    text = f"""global
    maxconn 4096
    nbthread {max(workers, 1)}
    stats socket {socket_path} mode 600 level admin
    tune.bufsize 65536

defaults
    mode http
    timeout connect 5s
    timeout client {listeners.timeout_s}s
    timeout server {listeners.timeout_s}s
    timeout http-request 60s
    timeout http-keep-alive {listeners.keep_alive_s}s
    # send at once: a request or answer split over packets would otherwise wait for the peer's delayed ACK (~40 ms)
    option http-no-delay
    # a replica port that refuses the connection: nothing was sent, so the request goes to the next server
    retry-on conn-failure
    retries 2
    option redispatch 1
"""
    if listeners.http_port:
        text += _http_section(listeners, bind_host, map_path, ports_path, limits_path)
    if listeners.grpc_port:
        text += _grpc_section(listeners, bind_host, map_path, ports_path, limits_path, management_app, pool_app)
    return text + _tables()
