"""What keeps the server from being ready (``/v2/health/ready``, gRPC ServerReady)."""
from __future__ import annotations

from types import SimpleNamespace

from modelpool.management.serve_state import not_serving


def app(status: str) -> SimpleNamespace:
    return SimpleNamespace(status=status)


def test_starting_failed_and_unhealthy_applications_keep_the_server_unready():
    apps = {"model:iris:1": app("RUNNING"), "model:new:1": app("DEPLOYING"), "model:bad:1": app("DEPLOY_FAILED"),
            "model:sick:1": app("UNHEALTHY")}
    assert not_serving(apps) == {"model:new:1": "DEPLOYING", "model:bad:1": "DEPLOY_FAILED",
                                 "model:sick:1": "UNHEALTHY"}


def test_an_application_being_deleted_is_an_unregistered_model_and_does_not_count():
    """Seen in a full run: a readiness probe just after an unregister answered 503 for the app on its way out."""
    assert not_serving({"model:iris:1": app("RUNNING"), "model:gone:1": app("DELETING")}) == {}
