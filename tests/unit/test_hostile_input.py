"""Issue 7, "Hostile input": each rule at unit level, with the exact status and message.

No Ray: the management API runs in FastAPI's TestClient around fakes (or the real core where a
check happens before any Ray call), model replicas are the real ``ModelServer``/``GenericPool``
classes called with ASGI requests built here. Model URLs (SSRF) and zip entries are pinned in
test_model_source.py and test_archive.py; the cluster.yaml token in test_cluster_configs.py.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import stat
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest
from starlette.requests import Request

with warnings.catch_warnings():  # starlette's notice about httpx, raised on import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from modelpool.cluster.net import is_loopback_host
from modelpool.cluster.settings import Settings, SettingsError, check_exposure, load_settings
from modelpool.deployments.codecs import plain_json as plain_codec, v2_json as v2_codec
from modelpool.deployments.archive_formats import read_manifest
from modelpool.deployments.errors import RequestError
from modelpool.deployments.examples import build_examples
from modelpool.deployments.generic_pool import GenericPool
from modelpool.deployments.handler_loader import load_handler
from modelpool.deployments.manifest import Manifest
from modelpool.deployments.model_deployment import ModelServer
from modelpool.deployments.redact import PLACEHOLDER, public_message
from modelpool.management import api as management_api
from modelpool.management import batch_routes
from modelpool.management.batch.service import BatchService
from modelpool.management.placement import plan
from modelpool.management.registry import ModelRecord
from modelpool.management.serve_configs import model_app_config
from modelpool.management.model_manager import ModelManager
from modelpool.cluster import local_cluster
from modelpool import cli

TOKEN = "management-token-for-tests-0123456789"
INFERENCE_TOKEN = "inference-token-for-tests-0123456789"
MANAGEMENT_401 = {"error": "missing or wrong management token; send 'Authorization: Bearer <token>' "
                           "(the token file's path is printed by `modelpool start`)", "field": "authorization"}
INFERENCE_401 = {"error": "missing or wrong inference token; send 'Authorization: Bearer <token>' with the token "
                          "the operator set (--inference-token) or the management token", "field": "authorization"}
ROW = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                              "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
EXECUTION_ID = "0123456789abcdef0123456789abcdef"


# ------------------------------------------------------------------------------------ fixtures


class FakeManager:
    """Records calls; what a route reaches when the token check lets it through."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.raise_on_register: Optional[RequestError] = None

    def list_models(self, params: Any) -> dict:
        self.calls.append("list_models")
        return {"nextPageToken": None, "models": []}

    def register(self, params: Any) -> tuple[int, dict]:
        self.calls.append("register")
        if self.raise_on_register is not None:
            raise self.raise_on_register
        return 202, {"status": "registered"}

    def services(self) -> list:
        self.calls.append("services")
        return []

    def put_pool(self, name: str, version: str, params: Any) -> dict:
        self.calls.append("put_pool")
        return {"status": "pool set"}


class FakeBatches:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def submit(self, body: Any, idempotency_key: Optional[str] = None, traceparent: Optional[str] = None) -> dict:
        self.calls.append("submit")
        return {"executionId": EXECUTION_ID, "state": "Pending"}

    def state(self, *args: Any) -> dict:
        self.calls.append("state")
        return {}

    def artifact(self, *args: Any) -> bytes:
        self.calls.append("artifact")
        return b"{}"


@pytest.fixture
def management(monkeypatch: pytest.MonkeyPatch):
    """The management API with a known token and fakes behind it; ``(client, manager, batches)``."""
    manager, batches = FakeManager(), FakeBatches()
    state = management_api.state
    for name, value in {"manager": manager, "batches": batches, "token": TOKEN, "debug": False,
                        "max_body_bytes": 4096, "body_timeout_s": 60.0,
                        "readiness": staticmethod(lambda: {"ready": True})}.items():
        monkeypatch.setattr(state, name, value, raising=False)
    with TestClient(management_api.api) as client:
        yield client, manager, batches


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("store")
    build_examples(folder)
    return folder


@pytest.fixture
def iris(store: Path, tmp_path: Path) -> ModelServer:
    """The real iris replica class, outside Serve (``reconfigure`` is what Serve would call)."""
    return ModelServer(str(store / "iris-1.zip"), str(tmp_path / "cache"), "iris", "1")


def user_config(settings: Settings) -> dict:
    """What management puts in a dedicated model's user_config for these settings."""
    return {"max_batch_size": 64, "max_batch_delay_ms": 5, "versions": ["1"], "serving": settings.serving_options()}


class Body:
    """An ASGI ``receive`` that hands out ``chunks`` (each after ``delay_s``), counting what was read."""

    def __init__(self, *chunks: bytes, delay_s: float = 0.0) -> None:
        self.chunks = list(chunks)
        self.delay_s = delay_s
        self.reads = 0

    async def __call__(self) -> dict:
        if not self.chunks:
            await asyncio.sleep(3600)  # the body is over: a disconnect would never come
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.reads += 1
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}


def request(method: str, path: str, body: Body | bytes = b"", headers: dict[str, str] | None = None,
            root: str = "/v2/models/iris") -> Request:
    receive = body if isinstance(body, Body) else Body(body)
    scope = {"type": "http", "method": method, "path": root + path, "root_path": root, "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    return Request(scope, receive)


def call(replica: Any, req: Request) -> tuple[int, dict, dict]:
    response = asyncio.run(replica(req))
    return response.status_code, json.loads(response.body), dict(response.headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------- management and batch API tokens

PROTECTED = [
    ("GET", "/models"), ("POST", "/models?url=iris-1.zip"), ("GET", "/services"), ("PUT", "/pools/iris/1"),
    ("OPTIONS", "/"), ("GET", "/openapi.json"), ("POST", "/batches"), ("GET", f"/batches/{EXECUTION_ID}"),
    ("GET", f"/batches/{EXECUTION_ID}/results/0/artifacts/report.json"), ("DELETE", f"/batches/{EXECUTION_ID}"),
]
WRONG = [{}, bearer("not-the-token"), bearer(TOKEN + "x"), bearer(TOKEN[:-1]), {"Authorization": TOKEN},
         {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}, {"X-Token": TOKEN}]


@pytest.mark.parametrize("method, path", PROTECTED)
@pytest.mark.parametrize("headers", WRONG, ids=["none", "wrong", "longer", "shorter", "no-scheme", "basic",
                                                "empty", "other-header"])
def test_management_and_batch_routes_answer_401_without_the_token(management, method, path, headers):
    client, manager, batches = management
    response = client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.json() == MANAGEMENT_401
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text
    assert manager.calls == [] and batches.calls == [], "nothing behind the check may run"


def test_health_needs_no_token_and_the_right_token_passes(management):
    client, manager, batches = management
    assert client.get("/ping").json() == {"status": "Healthy"}
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").status_code == 200
    assert client.get("/models", headers=bearer(TOKEN)).status_code == 200
    assert client.get("/models", headers={"Authorization": f"bearer  {TOKEN} "}).status_code == 200
    assert client.post("/batches", headers=bearer(TOKEN), json={"service": "iris"}).status_code == 202
    assert (manager.calls, batches.calls) == (["list_models", "list_models"], ["submit"])


def test_the_management_token_is_compared_in_constant_time(management, monkeypatch):
    client, _, _ = management
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert client.get("/models", headers=bearer("guess")).status_code == 401
    assert compared == [(b"guess", TOKEN.encode())]


def test_a_generated_token_is_written_for_its_owner_only_and_kept(tmp_path):
    settings = load_settings({"home": str(tmp_path / "home")}, {})
    token = local_cluster.management_token(settings)
    assert len(token) >= 40
    assert settings.token_path.read_text() == token
    assert stat.S_IMODE(settings.token_path.stat().st_mode) == 0o600
    assert local_cluster.management_token(settings) == token, "a restart keeps the token its users hold"


def test_a_configured_token_is_used_and_nothing_is_written(tmp_path):
    settings = load_settings({"home": str(tmp_path / "home")}, {"MODELPOOL_MANAGEMENT_TOKEN": TOKEN})
    assert local_cluster.management_token(settings) == TOKEN
    assert not settings.token_path.exists()


def test_start_prints_the_token_files_path_and_never_a_token(tmp_path):
    generated = load_settings({"home": str(tmp_path)}, {})
    lines = cli.banner_lines(generated, {"iris": ["1"]}, 12.0)
    assert f"  token:   {generated.token_path} (generated, readable by you only)" in lines
    configured = load_settings({"home": str(tmp_path), "inference_token": INFERENCE_TOKEN}, {"MODELPOOL_MANAGEMENT_TOKEN": TOKEN})
    text = "\n".join(cli.banner_lines(configured, {"iris": ["1"]}, 12.0))
    assert "Authorization: Bearer <your token>" in text and "Bearer <inference token>" in text
    assert TOKEN not in text and INFERENCE_TOKEN not in text


def test_tokens_never_appear_in_settings_reprs_errors_or_replica_configs():
    settings = load_settings({"inference_token": INFERENCE_TOKEN}, {"MODELPOOL_MANAGEMENT_TOKEN": TOKEN})
    for text in (repr(settings), str(settings)):
        assert TOKEN not in text and INFERENCE_TOKEN not in text
    with pytest.raises(SettingsError) as short:
        load_settings({"inference_token": "short-secret"}, {})
    assert str(short.value) == "--inference-token / MODELPOOL_INFERENCE_TOKEN: String should have at least 16 characters"
    with pytest.raises(SettingsError) as short_management:
        load_settings({}, {"MODELPOOL_MANAGEMENT_TOKEN": "short-secret"})
    assert str(short_management.value) == ("--management-token / MODELPOOL_MANAGEMENT_TOKEN: String should have at "
                                           "least 16 characters")
    with pytest.raises(ValueError) as direct:  # pydantic's own error text would echo the input
        Settings(inference_token="short-secret")
    assert "short-secret" not in str(direct.value)
    record = ModelRecord(name="iris", version="1", url="iris-1.zip", source="objects://x", digest="d", handler="sklearn",
                         runtime="python", batch_size=64, max_batch_delay_ms=5, initial_workers=1, min_workers=1,
                         max_workers=2, response_timeout_s=120)
    options = model_app_config(plan([record], {}, {}, settings).dedicated[0], "/cache", "code").deployment_options
    shown = json.dumps(options)  # what Serve's status and dashboard show of the deployment
    assert TOKEN not in shown and INFERENCE_TOKEN not in shown
    assert options["user_config"]["serving"]["inference_token_sha256"] == [
        hashlib.sha256(INFERENCE_TOKEN.encode()).hexdigest(), hashlib.sha256(TOKEN.encode()).hexdigest()]


# --------------------------------------------------------------------------------- binding

NETWORK_HOSTS = ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "fe80::1", "203.0.113.7"]
LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.2", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]", "::ffff:127.0.0.1"]


@pytest.mark.parametrize("host", NETWORK_HOSTS)
def test_start_refuses_a_network_host_without_a_management_token(host, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MODELPOOL_MANAGEMENT_TOKEN", raising=False)
    monkeypatch.setattr(cli.runtime, "start_local_head", lambda *_: pytest.fail("nothing may start"))
    home = tmp_path / "home"
    assert cli.main(["start", "--http-host", host, "--home", str(home)]) == 2
    assert capsys.readouterr().err == (
        f"modelpool: bad setting: --http-host {host} opens the management API to the network, but no management "
        "token is configured: set --management-token / MODELPOOL_MANAGEMENT_TOKEN to a secret you generate "
        "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))') and hand to the API's users, or bind "
        f"127.0.0.1. The token modelpool generates when none is set is for loopback only: it stays in "
        f"{home / 'management_token'} on this machine, so the network would be served on a credential that nobody "
        "chose, nobody else holds and nobody rotates\n")
    assert not home.exists(), "a refused start leaves nothing behind"


@pytest.mark.parametrize("host", NETWORK_HOSTS)
def test_a_network_host_with_a_configured_token_may_start(host):
    check_exposure(load_settings({"http_host": host, "management_token": TOKEN}, {}))
    check_exposure(load_settings({"http_host": host}, {"MODELPOOL_MANAGEMENT_TOKEN": TOKEN}))


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_loopback_hosts_may_start_with_a_generated_token(host):
    assert is_loopback_host(host)
    check_exposure(load_settings({"http_host": host}, {}))


def test_a_name_counts_as_loopback_only_if_every_address_is(monkeypatch):
    answers = {"lo.test": ["127.0.0.1", "::1"], "mixed.test": ["127.0.0.1", "10.1.2.3"], "lan.test": ["192.168.0.9"]}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
                for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert is_loopback_host("lo.test")
    assert not is_loopback_host("mixed.test") and not is_loopback_host("lan.test")
    assert not is_loopback_host("nowhere.test")
    with pytest.raises(SettingsError, match="^--http-host mixed.test opens the management API to the network"):
        check_exposure(load_settings({"http_host": "mixed.test"}, {}))


# --------------------------------------------------------------------------- inference token

def test_inference_is_open_by_default(iris):
    iris.reconfigure(user_config(load_settings({}, {})))
    assert call(iris, request("POST", "/infer", ROW))[0] == 200


@pytest.mark.parametrize("method, path", [("POST", "/infer"), ("POST", "/predict"), ("GET", ""), ("GET", "/ready"),
                                          ("POST", "/versions/1/infer"), ("GET", "/versions/7/ready"),
                                          ("GET", "/no-such-route")])
@pytest.mark.parametrize("headers", [{}, bearer("wrong-token-of-some-length"), {"Authorization": INFERENCE_TOKEN},
                                     bearer(INFERENCE_TOKEN + "x")], ids=["none", "wrong", "no-scheme", "longer"])
def test_with_an_inference_token_every_model_route_answers_401_without_it(iris, method, path, headers):
    iris.reconfigure(user_config(load_settings({"inference_token": INFERENCE_TOKEN}, {})))
    status, body, response_headers = call(iris, request(method, path, ROW, headers))
    assert (status, body) == (401, INFERENCE_401)
    assert response_headers["www-authenticate"] == "Bearer"


def test_the_inference_token_or_the_management_token_opens_model_routes(iris):
    iris.reconfigure(user_config(load_settings({"inference_token": INFERENCE_TOKEN, "management_token": TOKEN}, {})))
    for token in (INFERENCE_TOKEN, TOKEN):
        assert call(iris, request("POST", "/infer", ROW, bearer(token)))[0] == 200
        assert call(iris, request("GET", "", headers=bearer(token)))[0] == 200
        assert call(iris, request("GET", "/ready", headers=bearer(token)))[0] == 200
    iris.reconfigure(user_config(load_settings({}, {})))  # switched off live, like every serving option
    assert call(iris, request("POST", "/infer", ROW))[0] == 200


def test_the_inference_token_is_compared_by_digest_in_constant_time(iris, monkeypatch):
    from modelpool.cluster import tokens

    iris.reconfigure(user_config(load_settings({"inference_token": INFERENCE_TOKEN, "management_token": TOKEN}, {})))
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest
    monkeypatch.setattr(tokens.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    assert call(iris, request("POST", "/infer", ROW, bearer(INFERENCE_TOKEN)))[0] == 200
    digest = hashlib.sha256(INFERENCE_TOKEN.encode()).hexdigest()
    assert [a for a, _ in compared] == [digest, digest], "every accepted digest is compared, with no early exit"


def test_the_generic_pool_answers_401_before_saying_which_models_exist(tmp_path):
    pool = GenericPool(str(tmp_path / "cache"))
    settings = load_settings({"inference_token": INFERENCE_TOKEN}, {})
    pool.reconfigure({"catalog": {}, "known_models": ["secret-model"], "serving": settings.serving_options()})
    status, body, _ = call(pool, request("POST", "/unknown/infer", ROW, root="/v2/models"))
    assert (status, body) == (401, INFERENCE_401)
    status, body, _ = call(pool, request("POST", "/unknown/infer", ROW, bearer(INFERENCE_TOKEN), root="/v2/models"))
    assert (status, body) == (404, {"error": "unknown model 'unknown'; served models: secret-model",
                                    "field": "model_name"})


def test_inference_token_stays_out_of_declarative_serve_configs():
    from modelpool.management.serve_entrypoint import settings_from_args

    with pytest.raises(ValueError) as refused:
        settings_from_args({"inference_token": INFERENCE_TOKEN}, {"MODELPOOL_MANAGEMENT_TOKEN": TOKEN})
    assert str(refused.value) == (
        "inference_token must not be in the Serve config's args (they are readable by anyone who can read the "
        "RayService, are shown in Serve's status and logged by Serve's controller): set MODELPOOL_INFERENCE_TOKEN "
        "from a Kubernetes Secret instead")
    assert INFERENCE_TOKEN not in str(refused.value)


# ---------------------------------------------------------------------------------- bodies

def test_a_declared_body_over_the_limit_is_413_before_reading_it(iris):
    iris.reconfigure({**user_config(load_settings({}, {})), "max_body_bytes": 1024})
    body = Body(b"x" * 2048)
    status, answer, _ = call(iris, request("POST", "/infer", body, {"content-length": "2048"}))
    assert (status, answer) == (413, {"error": "request body of 2048 bytes exceeds the limit of 1024; send fewer rows "
                                               "per request", "field": "body"})
    assert body.reads == 0


def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(iris):
    iris.reconfigure({**user_config(load_settings({}, {})), "max_body_bytes": 1024})
    body = Body(*[b"x" * 400] * 1000)  # 400 kB announced by nobody: no content-length
    status, answer, _ = call(iris, request("POST", "/infer", body))
    assert (status, answer) == (413, {"error": "request body exceeds the limit of 1024 bytes; send fewer rows per "
                                               "request", "field": "body"})
    assert body.reads == 3, "reading stops at the chunk that passes the limit"


def test_a_trickling_body_gets_408_at_the_deadline(iris):
    iris.reconfigure(user_config(load_settings({"body_timeout_s": 0.3}, {})))
    body = Body(*[b" "] * 100, ROW, delay_s=0.05)  # a byte every 50 ms: 5 s for the whole body
    started = time.monotonic()
    status, answer, _ = call(iris, request("POST", "/infer", body))
    assert (status, answer) == (408, {"error": "the request body did not arrive within 0.3s; send it at once (the "
                                               "limit is --body-timeout-s)", "field": "body"})
    assert 0.3 <= time.monotonic() - started < 1.0


def test_a_body_deadline_ends_only_its_own_read_and_leaves_the_task_usable():
    from modelpool.deployments import deadlines

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await deadlines.within(0.05, asyncio.sleep(10))
        assert time.monotonic() - started < 0.05 + 2 * deadlines.SWEEP_EVERY_S
        assert getattr(asyncio.current_task(), "cancelling", lambda: 0)() == 0, "the cancellation was taken back"
        await asyncio.sleep(0.3)  # the task goes on awaiting after the timeout
        assert await deadlines.within(5, asyncio.sleep(0, "done")) == "done"
        reader = asyncio.ensure_future(deadlines.within(5, asyncio.sleep(10)))
        await asyncio.sleep(0.01)
        reader.cancel()  # someone else's cancellation is not turned into a timeout
        with pytest.raises(asyncio.CancelledError):
            await reader

    asyncio.run(scenario())


def test_nested_deadlines_each_end_only_their_own_wait():
    """The body read's deadline runs inside the call's (response_timeout): each raises only for itself."""
    from modelpool.deployments import deadlines

    async def inner_passes() -> str:
        try:
            await deadlines.within(0.05, asyncio.sleep(10))
        except asyncio.TimeoutError:
            return "inner timed out, outer goes on"
        return "no timeout"

    async def outer_passes_during_inner() -> None:
        await deadlines.within(10, asyncio.sleep(10))

    async def scenario() -> None:
        assert await deadlines.within(10, inner_passes()) == "inner timed out, outer goes on"
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await deadlines.within(0.05, outer_passes_during_inner())
        assert time.monotonic() - started < 0.05 + 2 * deadlines.SWEEP_EVERY_S
        assert getattr(asyncio.current_task(), "cancelling", lambda: 0)() == 0
        assert await deadlines.within(5, asyncio.sleep(0, "still usable")) == "still usable"

    asyncio.run(scenario())


def test_management_bodies_have_the_same_limits(management):
    client, manager, batches = management
    big = client.put("/pools/iris/1", headers=bearer(TOKEN), content=b"{" + b" " * 5000 + b"}")
    assert (big.status_code, big.json()) == (413, {"error": "request body of 5002 bytes exceeds the limit of 4096; "
                                                            "send fewer rows per request", "field": "body"})
    chunked = client.post("/batches", headers=bearer(TOKEN), content=iter([b"[" * 1000] * 5))
    assert (chunked.status_code, chunked.json()["error"]) == (413, "request body exceeds the limit of 4096 bytes; "
                                                                   "send fewer rows per request")
    assert manager.calls == [] and batches.calls == []


def test_deeply_nested_json_is_a_quick_400(management, iris):
    deep = b"[" * 100_000
    started = time.monotonic()
    with pytest.raises(RequestError) as nested:
        v2_codec.parse_infer_request(deep)
    with pytest.raises(RequestError) as nested_predict:
        plain_codec.parse_predict_request(b'{"instances": ' + deep)
    assert time.monotonic() - started < 0.5
    assert (nested.value.status, nested.value.field) == (400, "body")
    assert nested.value.message == ("request body is not valid JSON (it is nested too deeply); send a JSON object "
                                    f"such as {v2_codec._V2_EXAMPLE}")
    assert nested_predict.value.message.startswith("request body is not valid JSON (it is nested too deeply)")

    iris.reconfigure(user_config(load_settings({}, {})))
    status, body, _ = call(iris, request("POST", "/infer", deep))
    assert (status, body) == (400, {"error": nested.value.message, "field": "body"})

    client, manager, batches = management
    management_api.state.max_body_bytes = 1 << 20
    for method, path, text in [("POST", "/batches", "the body is not valid JSON; send {\"service\", \"version\", "
                                                    "\"records\" | \"input_uri\"}"),
                               ("PUT", "/pools/iris/1", "the body is not valid JSON; send parameters as a JSON object "
                                                        "or as query parameters")]:
        answer = client.request(method, path, headers=bearer(TOKEN), content=deep)
        assert (answer.status_code, answer.json()) == (400, {"error": text, "field": "body"})
    assert manager.calls == [] and batches.calls == []


def test_too_many_tensors_are_refused_and_many_outputs_parse_in_linear_time():
    one = {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}
    with pytest.raises(RequestError) as inputs:
        v2_codec.parse_infer_request({"inputs": [dict(one, name=f"i{k}") for k in range(5000)]})
    assert (inputs.value.status, inputs.value.field, inputs.value.message) == (
        400, "inputs", '"inputs" has 5000 tensors; at most 4096 are accepted, so put values of the same datatype '
                       "into one tensor with a wider shape")
    with pytest.raises(RequestError) as outputs:
        v2_codec.parse_infer_request({"inputs": [one], "outputs": [{"name": f"o{k}"} for k in range(5000)]})
    assert (outputs.value.status, outputs.value.field, outputs.value.message) == (
        400, "outputs", '"outputs" lists 5000 outputs; at most 4096 can be requested, or leave it out to get every '
                        "output")
    started = time.monotonic()
    parsed = v2_codec.parse_infer_request({"inputs": [one], "outputs": [{"name": f"o{k}"} for k in range(4096)]})
    assert len(parsed.requested_outputs) == 4096
    assert time.monotonic() - started < 0.5, "a list of requested names was checked quadratically (minutes at 200k)"


def test_an_s3_model_over_the_download_cap_is_refused_before_a_byte_is_downloaded(s3_server, tmp_path, monkeypatch):
    import uuid

    from modelpool.cluster.object_store import ObjectStore
    from modelpool.management.params import RegisterParams

    key = f"t-{uuid.uuid4().hex}/big-1.zip"
    ObjectStore(f"s3://{s3_server.bucket}", s3_endpoint=s3_server.endpoint).write_bytes(key, b"x" * 5000)
    manager = ModelManager(load_settings({"home": str(tmp_path), "s3_endpoint": s3_server.endpoint,
                                          "allowed_urls": rf"s3://{s3_server.bucket}/.*", "max_download_bytes": 4096},
                                         {}))
    monkeypatch.setattr(ObjectStore, "download_file", lambda *_: pytest.fail("the object was downloaded"))
    url = f"s3://{s3_server.bucket}/{key}"
    with pytest.raises(RequestError) as refused:
        manager.register(RegisterParams(url=url))
    assert (refused.value.status, refused.value.field, refused.value.message) == (
        413, "url", f"{url!r} is larger than the 4096-byte download limit (5000 bytes); ship a smaller archive or "
                    "copy it into the model store")


# --------------------------------------------------------------------------- error messages

def test_public_message_drops_server_paths_and_tracebacks_but_not_url_paths(tmp_path):
    path = tmp_path / "cache" / "iris" / "1" / "weights.npy"
    assert public_message(f"FileNotFoundError: [Errno 2] No such file or directory: '{path}'") == \
        f"FileNotFoundError: [Errno 2] No such file or directory: '{PLACEHOLDER}/weights.npy'"
    assert public_message(f"invalid syntax ({tmp_path}/handler.py, line 3)") == \
        f"invalid syntax ({PLACEHOLDER}/handler.py, line 3)"
    for untouched in ("no model route '/v2/models/iris/explain'; use /infer",
                      "'s3://tmp/models/x.zip' and 'http://root/m.zip' are not allowed"):
        assert public_message(untouched) == untouched
    serve_message = ("The deployment failed to start 3 times in a row. Error:\nTraceback (most recent call last):\n"
                     f'  File "{tmp_path}/x.py", line 1, in <module>\n    import nope\n'
                     "ModuleNotFoundError: No module named 'nope'\n")
    assert public_message(serve_message) == ("The deployment failed to start 3 times in a row. Error: "
                                              "ModuleNotFoundError: No module named 'nope' (traceback in the server log)")


def test_a_failing_handler_answers_500_without_server_paths_unless_debug(iris, tmp_path):
    missing = tmp_path / "secret" / "layout" / "lookup.csv"

    def predict(data):
        raise FileNotFoundError(2, "No such file or directory", str(missing))

    original, iris.model.handler.predict = iris.model.handler.predict, predict
    try:
        iris.reconfigure(user_config(load_settings({}, {})))
        quiet = call(iris, request("POST", "/infer", ROW))
        iris.reconfigure(user_config(load_settings({"debug": True}, {})))
        loud = call(iris, request("POST", "/infer", ROW))
    finally:
        iris.model.handler.predict = original
    assert quiet[:2] == (500, {"error": "model 'iris' version '1' failed: FileNotFoundError: [Errno 2] No such file "
                                        f"or directory: '{PLACEHOLDER}/lookup.csv'"})
    assert loud[0] == 500 and str(missing) in loud[1]["error"] and "traceback" in loud[1]


def test_management_errors_lose_server_paths_unless_debug(management, tmp_path):
    """A real loader message: a handler whose initialize opens a file that is not in the archive."""
    model_dir = tmp_path / "unpacked" / "broken" / "1"
    model_dir.mkdir(parents=True)
    (model_dir / "broken.py").write_text(
        "class Broken:\n"
        "    def initialize(self, context):\n"
        "        open(context.model_dir / 'weights.npy')\n"
        "    def predict(self, data):\n"
        "        return data\n")
    with pytest.raises(RequestError) as loading:
        load_handler(model_dir, Manifest(name="broken", version="1", handler="broken:Broken"))
    assert str(model_dir) in loading.value.message
    client, manager, _ = management
    manager.raise_on_register = RequestError(f"the archive failed to load: {loading.value.message}", field="url")
    answer = client.post("/models?url=broken-1.zip", headers=bearer(TOKEN))
    assert (answer.status_code, answer.json()) == (400, {
        "error": "the archive failed to load: handler 'broken:Broken' of model broken:1 failed to initialize: "
                 f"FileNotFoundError: [Errno 2] No such file or directory: '{PLACEHOLDER}/weights.npy'",
        "field": "url"})
    management_api.state.debug = True
    assert str(model_dir) in client.post("/models?url=broken-1.zip", headers=bearer(TOKEN)).json()["error"]


def test_batch_errors_lose_server_paths_unless_debug(tmp_path):
    """Row and job errors are a handler's exception text, stored as raised; they are cleaned when read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelpool.cluster.object_store import ObjectStore
    from modelpool.management.batch import layout

    store = ObjectStore(str(tmp_path / "objects"))
    raised = f"FileNotFoundError: [Errno 2] No such file or directory: '{tmp_path / 'cache' / 'lookup.csv'}'"
    store.write_json(layout.job_key(EXECUTION_ID), {
        "executionId": EXECUTION_ID, "service": "iris", "version": "1", "state": "Failed", "parallelCount": 1,
        "totalItems": 1, "partitionRows": 1, "error": raised})
    with store.open_output(layout.part_key(EXECUTION_ID, 0)) as out:
        pq.write_table(pa.table({"index": pa.array([0], pa.int64()), "status": ["Failed"], "error": [raised]}), out)
    shown = f"FileNotFoundError: [Errno 2] No such file or directory: '{PLACEHOLDER}/lookup.csv'"
    quiet = BatchService(load_settings({"home": str(tmp_path)}, {}), store, registry=None)
    state = quiet.state(EXECUTION_ID, show_partial_results=True)
    assert (state["error"], state["results"][0]["error"]) == (shown, shown)
    assert quiet.result(EXECUTION_ID, 0) == {"index": 0, "status": "Failed", "error": shown, "outputs": {}}
    loud = BatchService(load_settings({"home": str(tmp_path), "debug": True}, {}), store, registry=None)
    assert loud.result(EXECUTION_ID, 0)["error"] == raised


def test_archive_errors_name_the_archive_not_where_it_lies(tmp_path):
    junk = tmp_path / "deep" / "inside" / "junk.zip"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"not a zip")
    with pytest.raises(RequestError) as unreadable:
        read_manifest(junk)
    assert (unreadable.value.status, unreadable.value.message) == (
        400, "'junk.zip' is not a directory or a readable zip archive (File is not a zip file)")
    with pytest.raises(RequestError) as missing:
        read_manifest(tmp_path / "deep" / "gone.zip")
    assert (missing.value.status, missing.value.message) == (404, "no model archive 'gone.zip'")
    (tmp_path / "deep" / "emptydir").mkdir()
    with pytest.raises(RequestError) as bare:
        read_manifest(tmp_path / "deep" / "emptydir")
    assert bare.value.message == ("'emptydir' has no MANIFEST.json (nor the MAR-INF/MANIFEST.json of a TorchServe or "
                                  "MMS archive); build an archive with `modelpool archive` or torch-model-archiver")


# ----------------------------------------------------------------------- names and artifacts

@pytest.fixture
def real_core(management, tmp_path, monkeypatch):
    """The real ModelManager and BatchService (their name checks run before any Ray call)."""
    settings = load_settings({"home": str(tmp_path / "home")}, {})
    manager = ModelManager(settings)
    monkeypatch.setattr(management_api.state, "manager", manager)
    monkeypatch.setattr(management_api.state, "batches", BatchService(settings, manager.store, manager.registry))
    return management[0], manager.store


NAME_RULE = "is not allowed: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit and without '..'"


@pytest.mark.parametrize("method, path, field, shown", [
    ("GET", "/models/a..b", "model_name", "model name 'a..b'"),
    ("GET", "/models/.hidden", "model_name", "model name '.hidden'"),
    ("GET", "/models/%2E%2E", "model_name", "model name '..'"),
    ("DELETE", "/models/iris/%2e%2e", "model_version", "model version '..'"),
    ("PUT", "/models/iris/%2E%2E%5Cx/set-default", "model_version", "model version '..\\\\x'"),
    ("GET", "/models/iris/v%001", "model_version", "model version 'v\\x001'"),
])
def test_model_names_and_versions_with_path_characters_are_refused(real_core, method, path, field, shown):
    client, store = real_core
    answer = client.request(method, path, headers=bearer(TOKEN))
    assert (answer.status_code, answer.json()) == (400, {"error": f"{shown} {NAME_RULE}", "field": field})
    assert store.list() == []


def test_a_register_naming_a_model_with_path_characters_is_refused(real_core, store):
    client, objects = real_core
    manager = management_api.state.manager
    manager.settings.model_store = str(store)
    answer = client.post("/models?url=iris-1.zip&model_name=../../etc", headers=bearer(TOKEN))
    assert (answer.status_code, answer.json()) == (400, {"error": f"model name '../../etc' {NAME_RULE}",
                                                         "field": "model_name"})
    assert objects.list() == []


ARTIFACT_RULE = "; use a single file name of 1-255 characters without '/', '\\', '..' or NUL, not starting with '.'"


@pytest.mark.parametrize("raw, shown, problem", [
    ("%2e%2e", "'..'", "it contains '..'"),  # a literal '..' is resolved away by the client before it is sent
    ("%2E%2E", "'..'", "it contains '..'"),
    ("a..b", "'a..b'", "it contains '..'"),
    ("..%5C..%5Cjob.json", "'..\\\\..\\\\job.json'", "it contains a path separator"),
    ("report%00.json", "'report\\x00.json'", "it contains NUL"),
    (".hidden", "'.hidden'", "it starts with '.'"),
])
def test_artifact_names_from_requests_cannot_leave_their_row(real_core, raw, shown, problem):
    client, store = real_core
    answer = client.get(f"/batches/{EXECUTION_ID}/results/0/artifacts/{raw}", headers=bearer(TOKEN))
    assert (answer.status_code, answer.json()) == (400, {
        "error": f"artifact name {shown} is not allowed ({problem}){ARTIFACT_RULE}", "field": "artifact"})


@pytest.mark.parametrize("raw", ["..%2F..%2Fjob.json", "%2Fetc%2Fpasswd", "a%2Fb"])
def test_artifact_names_with_a_slash_match_no_route(real_core, raw):
    client, store = real_core
    assert client.get(f"/batches/{EXECUTION_ID}/results/0/artifacts/{raw}", headers=bearer(TOKEN)).status_code == 404
    assert store.list() == []


def test_an_artifact_name_cannot_break_the_download_header():
    assert batch_routes.attachment('rapport "final"; x=1\r\n.json') == (
        "attachment; filename=\"rapport__final___x_1__.json\"; "
        "filename*=UTF-8''rapport%20%22final%22%3B%20x%3D1%0D%0A.json")
    assert batch_routes.attachment("报告.json") == \
        "attachment; filename=\"__.json\"; filename*=UTF-8''%E6%8A%A5%E5%91%8A.json"


@pytest.mark.parametrize("key", ["", "x" * 129, "has space", "a/b", "k;v=1"])
def test_a_batch_idempotency_key_outside_the_rule_is_a_400_before_anything_is_written(real_core, key):
    client, store = real_core
    answer = client.post("/batches", headers={**bearer(TOKEN), "Idempotency-Key": key},
                         json={"service": "iris", "records": [[1, 2, 3, 4]]})
    assert (answer.status_code, answer.json()) == (400, {
        "error": "Idempotency-Key must be 1 to 128 of A-Z a-z 0-9 . _ : - (a UUID will do)", "field": "Idempotency-Key"})
    assert store.list() == []
