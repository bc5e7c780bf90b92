"""cluster/kuberay-rayservice.yaml: what can be checked without a Kubernetes cluster.

The whole resource against KubeRay's own RayService CRD (v1.7.0, tests/data/kuberay), with unknown fields as errors
(the API server would drop them silently); the Serve config against Ray Serve's own schema; the import path built
the way Serve's controller builds it; and the image, Ray version, ports and environment against pyproject.toml,
cluster.yaml and the code that `modelpool start` runs.
"""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from ray._common.utils import import_attr
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.build_app import build_app
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from modelpool.cluster.runtime import SERVE_ENV
from modelpool.cluster.settings import Settings, env_name, load_settings
from tests import crd_schema

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "cluster" / "kuberay-rayservice.yaml"
DOCKERFILE = ROOT / "cluster" / "Dockerfile"
TOKEN = "test-token-from-the-secret"
# Values the manifest takes from Secrets, as the kubelet would resolve them: (secret, key) -> value.
SECRETS = {("modelpool", "management-token"): TOKEN}

CRD = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayservices.yaml"


def manifest() -> dict:
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]
    assert len(documents) == 1, "one RayService; the Secret is created with kubectl, never committed"
    return documents[0]


def serve_config() -> dict:
    return yaml.safe_load(manifest()["spec"]["serveConfigV2"])


def management_app_config() -> dict:
    (app,) = [a for a in serve_config()["applications"] if a["name"] == "management"]
    return app


def pod_specs() -> Iterator[tuple[str, dict]]:
    cluster = manifest()["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group


def ray_containers() -> Iterator[tuple[str, dict]]:
    """KubeRay runs Ray in the first container of each pod template."""
    for name, group in pod_specs():
        yield name, group["template"]["spec"]["containers"][0]


def resolved_env(container: dict) -> dict[str, str]:
    """The container's environment as the kubelet would set it, with SECRETS as the Secret's data."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        value = SECRETS.get((ref["name"], ref["key"]))
        if value is None:
            assert ref.get("optional"), f"{item['name']} needs key {ref['key']} in Secret {ref['name']}"
        else:
            env[item["name"]] = value
    return env


def head_env() -> dict[str, str]:
    return resolved_env(dict(ray_containers())["head"])


def manifest_settings() -> Settings:
    """The Settings the management app gets: the pod's MODELPOOL_* variables, then the config's args."""
    return load_settings(management_app_config().get("args") or {}, head_env())


def pinned_ray_version() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [re.fullmatch(r"ray\[[^\]]*\]==(\S+)", dep) for dep in project["dependencies"] if dep.startswith("ray[")]
    assert pin, "pyproject.toml pins Ray with =="
    return pin.group(1)


@pytest.fixture(scope="module")
def rayservice_schema() -> jsonschema.Draft7Validator:
    return crd_schema.validator(CRD, "v1")


def test_the_manifest_passes_kuberays_own_crd_with_unknown_fields_as_errors(rayservice_schema):
    doc = manifest()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    assert crd_schema.problems(rayservice_schema, doc) == []


def _worker_group(doc: dict) -> dict:
    return doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]


def _head_container(doc: dict) -> dict:
    return doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("where, right, wrong", [
    (lambda doc: doc["spec"], "serveConfigV2", "serveConfigv2"),
    (lambda doc: doc["spec"]["rayClusterConfig"], "enableInTreeAutoscaling", "enableInTreeAutoScaling"),
    (lambda doc: doc["spec"]["rayClusterConfig"]["autoscalerOptions"], "idleTimeoutSeconds", "idleTimeoutSecond"),
    (_worker_group, "maxReplicas", "maxReplica"),
    (_head_container, "resources", "resource"),
    (lambda doc: _head_container(doc)["ports"][0], "containerPort", "containerport"),
])
def test_a_misspelt_key_is_an_error_naming_it(rayservice_schema, where, right, wrong):
    doc = manifest()
    parent = where(doc)
    parent[wrong] = parent.pop(right)
    found = crd_schema.problems(rayservice_schema, doc)
    assert any(f"'{wrong}' was unexpected" in problem for problem in found), found


@pytest.mark.parametrize("change, expected", [
    (lambda doc: _head_container(doc)["ports"][0].update(containerPort="6379"), "'6379' is not of type 'integer'"),
    (lambda doc: _worker_group(doc).update(replicas=[1]), "[1] is not of type 'integer'"),
    (lambda doc: _head_container(doc)["resources"]["limits"].update(cpu=[2]), "[2] is not valid"),
    (lambda doc: doc["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update(port=6379),
     "6379 is not of type 'string'"),
])
def test_a_value_of_the_wrong_type_is_an_error(rayservice_schema, change, expected):
    doc = manifest()
    change(doc)
    found = crd_schema.problems(rayservice_schema, doc)
    assert any(expected in problem for problem in found), found


def test_kubernetes_extensions_read_as_the_api_server_reads_them():
    """int-or-string, nullable, preserve-unknown-fields and embedded resources, on small structural schemas."""
    schema = crd_schema.to_json_schema({"type": "object", "properties": {
        "quantity": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        "port": {"x-kubernetes-int-or-string": True},
        "maybe": {"type": "string", "nullable": True},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"known": {"type": "integer"}}},
        "pod": {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {"spec": {"type": "object"}}},
    }})
    check = jsonschema.Draft7Validator(schema)

    def ok(resource: dict) -> bool:
        return not list(check.iter_errors(resource))

    assert ok({"quantity": 2}) and ok({"quantity": "500m"}) and ok({"port": "http"}) and ok({"port": 8000})
    assert not ok({"port": 1.5}) and not ok({"port": ["http"]})
    assert ok({"maybe": None}) and ok({"maybe": "x"}) and not ok({"maybe": 3})
    assert ok({"open": {"known": 1, "anything": {"else": True}}}) and not ok({"open": {"known": "one"}})
    assert ok({"pod": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}})
    assert not ok({"pod": {"spek": {}}}) and not ok({"unknown": 1})


def test_serve_config_passes_ray_serves_own_schema():
    config = serve_config()
    ServeDeploySchema.model_validate(config)
    # ServeDeploySchema ignores unknown keys (forward compatibility), so a misspelt key would be
    # dropped silently: every key must be one of Serve's fields.
    assert set(config) <= set(ServeDeploySchema.model_fields)
    for app in config["applications"]:
        assert set(app) <= set(ServeApplicationSchema.model_fields)


def test_serve_config_holds_only_the_management_app_at_root():
    """Model apps are deployed by the management app (imperative); listing them here would let
    every KubeRay apply overwrite what the registry says."""
    apps = serve_config()["applications"]
    assert [(a["name"], a["route_prefix"]) for a in apps] == [("management", "/")]
    assert apps[0]["import_path"] == "modelpool.management.serve_entrypoint:app"


@pytest.fixture
def pod_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's environment made to look like the head pod's (none of this machine's MODELPOOL_*)."""
    env = head_env()
    for key in [k for k in os.environ if k.startswith("MODELPOOL_") or k == "RAY_ADDRESS"]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_the_import_path_builds_the_management_app_as_serves_controller_does(pod_environment):
    """What Serve's build task runs (application_state.build_serve_application): import the path,
    call the builder with the config's args, build the application."""
    app_config = management_app_config()
    app = call_user_app_builder_with_args_if_necessary(import_attr(app_config["import_path"]), app_config.get("args") or {})
    assert isinstance(app, Application)
    built = build_app(app, name=app_config["name"], default_runtime_env={})
    built.validate_single_fastapi_ingress()
    assert built.ingress_deployment_name == "Management"
    settings_arg, token_arg = app._bound_deployment.init_args
    assert token_arg == TOKEN
    assert Settings(**settings_arg) == manifest_settings()
    assert settings_arg["object_store"].startswith("s3://"), "every node must reach the same registry"
    assert settings_arg["register_store"] is False, "a pod's model store is empty and private to it"


def test_the_builder_refuses_a_token_in_args_and_a_missing_token():
    from modelpool.management.serve_entrypoint import settings_from_args

    env = {key: value for key, value in head_env().items() if key != env_name("management_token")}
    with pytest.raises(ValueError, match="must not be in the Serve config's args"):
        settings_from_args({"management_token": "visible-to-everyone"}, {**env, env_name("management_token"): TOKEN})
    with pytest.raises(ValueError, match="MODELPOOL_MANAGEMENT_TOKEN is not set"):
        settings_from_args({}, env)
    assert settings_from_args({}, {**env, env_name("management_token"): TOKEN}).management_token == TOKEN


def test_http_and_logging_options_are_what_modelpool_start_would_pass():
    """runtime.start_serve: host, port and keep-alive from Settings; Serve's global logging config."""
    settings = manifest_settings()
    config = serve_config()
    assert config["http_options"] == {"host": "0.0.0.0", "port": settings.http_port, "keep_alive_timeout_s": settings.keep_alive_s}
    assert settings.http_host == "0.0.0.0", "the ingress must bind all interfaces in a pod"
    assert config["logging_config"] == settings.logging_config()
    assert config["proxy_location"] == "EveryNode", "every pod's ingress serves, as the serve Service expects"


def test_every_ray_container_exposes_serve_and_metrics_on_the_configured_ports():
    settings = manifest_settings()
    cluster_yaml = (ROOT / "cluster.yaml").read_text()
    assert f"--metrics-export-port={settings.metrics_port}" in cluster_yaml, "same metrics port as ray up"
    for name, group in pod_specs():
        container = group["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == settings.http_port, name
        assert ports["metrics"] == settings.metrics_port, name
        assert group["rayStartParams"]["metrics-export-port"] == str(settings.metrics_port), name


def test_every_ray_container_has_the_same_environment_with_the_haproxy_ingress():
    envs = {name: resolved_env(container) for name, container in ray_containers()}
    first = next(iter(envs.values()))
    assert all(env == first for env in envs.values()), "the builder, replicas and batch tasks run on any node"
    for key in set(SERVE_ENV) - {"RAY_AUTH_MODE"}:  # token auth is authOptions, checked below
        assert first[key] == SERVE_ENV[key], key
    assert first["MODELPOOL_OBJECT_STORE"].startswith("s3://")
    known = {env_name(field) for field in Settings.model_fields}
    assert {k for k in first if k.startswith("MODELPOOL_")} <= known, "a misspelt MODELPOOL_ variable is ignored"


def test_secrets_come_from_secrets_and_ray_auth_from_kuberay():
    for name, container in ray_containers():
        by_name = {item["name"]: item for item in container["env"]}
        assert "value" not in by_name["MODELPOOL_MANAGEMENT_TOKEN"], name
        assert "secretKeyRef" in by_name["MODELPOOL_MANAGEMENT_TOKEN"]["valueFrom"], name
        assert not {"RAY_AUTH_TOKEN", "RAY_AUTH_MODE"} & set(by_name), "KubeRay's authOptions sets these"
    assert manifest()["spec"]["rayClusterConfig"]["authOptions"] == {"mode": SERVE_ENV["RAY_AUTH_MODE"]}
    assert "management_token" not in (management_app_config().get("args") or {})


def test_image_and_ray_version_match_the_pin():
    version = pinned_ray_version()
    cluster = manifest()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == version
    images = {container["image"] for _, container in ray_containers()}
    assert len(images) == 1, "head and workers must run the same code"
    base = re.search(r"^FROM rayproject/ray:(\S+)-py3(\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert base, "the image builds on Ray's own image"
    assert base.group(1) == version
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"3.{base.group(2)}" in SpecifierSet(requires)


def test_the_dockerfile_copies_every_package_of_the_project():
    folders = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    dockerfile = DOCKERFILE.read_text()
    for folder in folders:
        assert re.search(rf"^COPY .*\b{folder}/ {folder}/$", dockerfile, re.MULTILINE), folder
    assert "pip install --no-cache-dir ." in dockerfile


def test_workers_autoscale():
    cluster = manifest()["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"], group["groupName"]


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_no_deprecated_health_thresholds():
    """KubeRay no longer reads them (kuberay issue 1685); setting them would suggest otherwise."""
    keys = {key for node in _walk(manifest()) if isinstance(node, dict) for key in node}
    assert not keys & {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}
