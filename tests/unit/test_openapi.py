"""The management API's OpenAPI description states its real contract (what a client generator or a fuzzer reads)."""
import pytest

from management.api import api
from management.params import RegisterParams


@pytest.fixture(scope="module")
def spec() -> dict:
    return api.openapi()


def operations(spec: dict):
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


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


def test_register_lists_every_parameter_it_parses(spec):
    parameters = {p["name"]: p for p in spec["paths"]["/models"]["post"]["parameters"]}
    assert set(parameters) == (set(RegisterParams.model_fields) - {"idempotency_key"}) | {"Idempotency-Key"}
    assert parameters["url"]["required"] and parameters["url"]["schema"]["minLength"] == 1
    assert parameters["Idempotency-Key"]["in"] == "header"
    assert parameters["batch_size"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100000}
    assert "requestBody" in spec["paths"]["/batches"]["post"]


def test_schemathesis_reads_every_operation(spec):
    import schemathesis

    schema = schemathesis.openapi.from_dict(spec)
    assert len(list(schema.get_all_operations())) == sum(1 for _ in operations(spec))


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
