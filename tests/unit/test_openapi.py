"""The OpenAPI description states the real contract (what a client generator or a fuzzer reads): management and
inference in one OpenAPI 3.0.1 document, as MMS answers ``OPTIONS /``."""
import warnings

import pytest
from openapi_spec_validator import OpenAPIV30SpecValidator, validate

from modelpool.management.api import api
from modelpool.management.openapi30 import schema_30
from modelpool.management.params import RegisterParams

with warnings.catch_warnings():  # starlette's notice about httpx, raised on import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def spec() -> dict:
    return api.openapi()


INFERENCE_PREFIXES = ("/v2/models/", "/predictions/", "/explanations/", "/v1/")


def operations(spec: dict, inference: bool = False):
    """(path, method, operation) of the management routes, or of the inference routes."""
    for path, methods in spec["paths"].items():
        if path.startswith(INFERENCE_PREFIXES) == inference:
            for method, operation in methods.items():
                yield path, method, operation


def test_the_document_is_valid_openapi_3_0_as_mms_answers(spec):
    assert spec["openapi"] == "3.0.1"
    validate(spec, cls=OpenAPIV30SpecValidator)  # raises on any 3.1 construct (type lists, const, numeric exclusive*)


def test_options_slash_answers_the_same_document_behind_the_token(monkeypatch):
    from modelpool.management import api as routes

    monkeypatch.setattr(routes.state, "token", "t0ken-for-the-openapi-test", raising=False)
    with TestClient(api) as client:
        assert client.options("/").status_code == 401
        answered = client.options("/", headers={"Authorization": "Bearer t0ken-for-the-openapi-test"})
        assert answered.status_code == 200
        assert answered.json() == client.get("/openapi.json", headers={
            "Authorization": "Bearer t0ken-for-the-openapi-test"}).json()
    assert answered.json()["openapi"] == "3.0.1"


def test_it_describes_the_inference_apis_beside_management(spec):
    paths = spec["paths"]
    for version in ("", "/versions/{model_version}"):
        base = f"/v2/models/{{model_name}}{version}"
        assert {"post"} <= set(paths[f"{base}/infer"]) and "get" in paths[base] and "get" in paths[f"{base}/ready"]
        infer = paths[f"{base}/infer"]["post"]
        assert infer["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/V2InferenceRequest"}
        assert "application/octet-stream" in infer["requestBody"]["content"]  # the binary tensor extension
    assert {"post", "put"} <= set(paths["/predictions/{model_name}"])
    assert {"post", "put"} <= set(paths["/predictions/{model_name}/{model_version}"])
    assert "get" in paths["/v1/models/{model_name}"] and "post" in paths["/v1/models/{model_name}:predict"]
    assert set(paths["/v1/models/{model_name}:explain"]["post"]["responses"]) >= {"501", "404"}
    for path in ("/explanations/{model_name}", "/explanations/{model_name}/{model_version}"):
        assert set(paths[path]["post"]["responses"]) >= {"501", "404"} and "put" in paths[path]
    assert "get" in paths["/ping"] and {"post", "get"} <= set(paths["/models"])
    for path, method, operation in operations(spec, inference=True):
        assert operation["security"] == [{}, {"inference": []}], (method, path)  # a token only when one is set
        starting = operation["responses"]["503"]
        assert "Retry-After" in starting["headers"], (method, path)  # registered but starting: come back later


def test_every_route_but_health_needs_the_bearer_token_and_documents_401(spec):
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "the management token (`modelpool start` prints its file)"}
    for path, method, operation in operations(spec):
        if path in ("/ping", "/v2/health/live", "/v2/health/ready", "/v2"):
            assert operation["security"] == [], path
        else:
            assert operation["security"] == [{"bearer": []}], (method, path)
            assert "401" in operation["responses"], (method, path)


def test_validation_errors_are_documented_as_the_400_the_api_sends_never_422(spec):
    for path, method, operation in operations(spec):
        assert "422" not in operation["responses"], (method, path)
        if "{" in path:
            assert operation["responses"]["400"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_the_model_answers_are_documented_in_torchserves_shapes(spec):
    register = spec["paths"]["/models"]["post"]["responses"]
    assert {"200", "202"} <= set(register)
    assert register["202"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Status"}
    described = spec["paths"]["/models/{model_name}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert described["schema"]["items"] == {"$ref": "#/components/schemas/ModelDescription"}
    keys = spec["components"]["schemas"]["ModelDescription"]["properties"]
    assert {"engine", "runtime", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout",
            "startupTimeout", "loadedAtStartup", "workers", "jobQueueStatus"} <= set(keys)
    timeout = {p["name"]: p for p in spec["paths"]["/models/{model_name}"]["put"]["parameters"]}["timeout"]
    assert timeout["schema"]["minimum"] == -1


@pytest.mark.parametrize("schema31, schema30", [
    ({"type": ["string", "null"]}, {"type": "string", "nullable": True}),
    ({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "title": "x"},
     {"type": "integer", "minimum": 1, "nullable": True, "title": "x"}),
    ({"type": "boolean", "const": True}, {"type": "boolean", "enum": [True]}),
    ({"type": "number", "exclusiveMinimum": 0, "maximum": 3600}, {"type": "number", "minimum": 0,
                                                                  "exclusiveMinimum": True, "maximum": 3600}),
    ({"type": "array", "items": {"type": ["integer", "null"]}}, {"type": "array", "items": {"type": "integer",
                                                                                          "nullable": True}}),
    ({"type": "string", "examples": ["a", "b"]}, {"type": "string", "example": "a"}),
    ({"type": "string", "contentMediaType": "application/octet-stream"}, {"type": "string", "format": "binary"}),
])
def test_json_schema_2020_constructs_become_their_openapi_3_0_forms(schema31, schema30):
    assert schema_30(schema31) == schema30


def test_register_lists_every_parameter_it_parses(spec):
    parameters = {p["name"]: p for p in spec["paths"]["/models"]["post"]["parameters"]}
    assert set(parameters) == (set(RegisterParams.model_fields) - {"idempotency_key"}) | {"Idempotency-Key"}
    assert not parameters["url"]["required"] and parameters["url"]["schema"]["minLength"] == 1  # or in the body
    body = spec["paths"]["/models"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["url"] and set(body["properties"]) == set(RegisterParams.model_fields) - {"idempotency_key"}
    assert parameters["Idempotency-Key"]["in"] == "header"
    assert parameters["batch_size"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100000}
    assert "requestBody" in spec["paths"]["/batches"]["post"]


def test_schemathesis_reads_every_operation(spec):
    import schemathesis

    schema = schemathesis.openapi.from_dict(spec)
    every = sum(1 for _ in operations(spec)) + sum(1 for _ in operations(spec, inference=True))
    assert len(list(schema.get_all_operations())) == every


def test_answers_outside_the_signatures_are_documented(spec):
    """Found by the fuzzer once it read real batches: an artifact is bytes, and readiness can be a 503."""
    artifact = spec["paths"]["/batches/{execution_id}/results/{index}/artifacts/{name}"]["get"]["responses"]["200"]
    assert list(artifact["content"]) == ["application/octet-stream"]
    ready = spec["paths"]["/v2/health/ready"]["get"]["responses"]
    assert ready["503"]["content"]["application/json"]["schema"]["required"] == ["ready", "notReady"]


def test_the_model_repository_routes_document_their_optional_bodies_and_answers(spec):
    index = spec["paths"]["/v2/repository/index"]["post"]
    assert index["requestBody"]["required"] is False
    assert index["requestBody"]["content"]["application/json"]["schema"]["properties"]["ready"] == {
        "type": "boolean", "description": "true: only the models ready for inference"}
    entry = index["responses"]["200"]["content"]["application/json"]["schema"]["items"]
    assert entry["required"] == ["name", "version", "state", "reason"]
    for action in ("load", "unload"):
        operation = spec["paths"][f"/v2/repository/models/{{model_name}}/{action}"]["post"]
        assert "content" not in operation["responses"]["200"]  # Triton answers 200 with an empty body
        assert {"400", "401", "404"} <= set(operation["responses"])
        assert "parameters" in operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
