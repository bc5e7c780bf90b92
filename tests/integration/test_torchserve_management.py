"""MMS's and TorchServe's documented management calls against a real cluster, answering as they document.

The requests are the documentation's (docs/management_api.md, /work/shared/reference/mms-management-api.txt),
with modelpool's store archives for the URL; the answers are TorchServe's codes and texts.

Read your writes: once a call has answered, the next inference sees it (no 404 for a model just registered,
no answer from one just unregistered, the new default at once), checked back to back on one keep-alive
connection as a client script runs them. Where a call moves a route between applications (a version with
workers of its own gains or loses the model's short route), Serve's HAProxy reloads, and a connection kept
open across the reload gets one more answer from the process that routes as before; those checks use a
new connection (README, "Where modelpool differs on purpose").
"""
from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.integration

ROW = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [6.3, 3.3, 6.0, 2.5]}]}


def infer(http, url: str, name: str, version: str = "") -> requests.Response:
    """``http``: a keep-alive session, or the ``requests`` module for a new connection."""
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    return http.post(url + path, json=ROW, timeout=60)


def test_the_documented_model_calls_answer_as_documented(cluster, admin, http):
    """Register (workers starting), scale, describe, list, set-default, unregister: MMS's and TorchServe's examples."""
    url = f"{cluster.url}/models"
    started = admin.post(f"{url}?initial_workers=1&synchronous=false&url=iris-1.zip&model_name=ts_docs&runtime=PYTHON")
    assert (started.status_code, started.json()) == (202, {"status": "Processing worker updates..."})
    try:
        early = infer(http, cluster.url, "ts_docs")  # at once: its worker is starting, so it waits or says retry
        assert early.status_code in (200, 503), early.text
        if early.status_code == 503:
            assert early.headers["Retry-After"] == "1"
        scaled = admin.put(f"{url}/ts_docs/1?min_worker=1&synchronous=true")
        assert (scaled.status_code, scaled.json()) == (200, {"status": "Workers scaled to 1 for model: ts_docs, version: 1"})
        assert infer(http, cluster.url, "ts_docs").status_code == 200

        second = admin.post(f"{url}?url=iris-2.zip&model_name=ts_docs")  # a second version, no workers: nothing pending
        assert (second.status_code, second.json()) == (200, {"status": (
            'Model "ts_docs" Version: 2 registered with 0 initial workers. Use scale workers API to add workers '
            "for the model.")})
        assert infer(requests, cluster.url, "ts_docs").json()["model_version"] == "2"  # the newest is the default

        described = admin.get(f"{url}/ts_docs/1").json()
        assert len(described) == 1 and described[0]["engine"] == "scikit-learn" and described[0]["runtime"] == "python"
        assert {"modelName", "modelVersion", "modelUrl", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay",
                "responseTimeout", "startupTimeout", "loadedAtStartup", "jobQueueStatus", "workers"} <= set(described[0])
        assert {"id", "startTime", "status", "gpu", "memoryUsage", "pid", "gpuUsage"} <= set(described[0]["workers"][0])
        assert [d["modelVersion"] for d in admin.get(f"{url}/ts_docs/all").json()] == ["1", "2"]

        for timeout in ("-1", "0"):  # TorchServe's regression suite sends both; MMS documents both
            accepted = admin.put(f"{url}/ts_docs/1?min_worker=1&timeout={timeout}")
            assert (accepted.status_code, accepted.json()) == (202, {"status": "Processing worker updates..."})
        assert admin.put(f"{url}/ts_docs/1?min_worker=1&synchronous=true&timeout=0").status_code == 200  # runs already

        listed = admin.get(f"{url}?limit=&next_page_token=")
        assert listed.status_code == 200
        everything = [m["modelName"] for m in listed.json()["models"]]
        assert "ts_docs" in everything
        page = admin.get(f"{url}?limit=2&next_page_token=2").json()
        assert [m["modelName"] for m in page["models"]] == everything[2:4]
        assert page["nextPageToken"] == ("4" if len(everything) > 4 else None)

        assert admin.put(f"{url}/ts_docs/1/set-default").json() == {
            "status": 'Default version successfully updated for model "ts_docs" to "1"'}
        assert infer(requests, cluster.url, "ts_docs").json()["model_version"] == "1"
        assert admin.put(f"{url}/ts_docs/2/set-default").status_code == 200
        assert infer(requests, cluster.url, "ts_docs").json()["model_version"] == "2"

        for _ in range(2):  # the first may be the last answer of a process from before the route moves above
            assert infer(http, cluster.url, "ts_docs", "1").status_code == 200
        removed = admin.delete(f"{url}/ts_docs/1")
        assert (removed.status_code, removed.json()) == (200, {"status": 'Model "ts_docs" unregistered'})
        gone = infer(http, cluster.url, "ts_docs", "1")  # its worker drains for a while, but no longer answers for it
        assert (gone.status_code, gone.json()["field"]) == (404, "version"), gone.text
        assert infer(http, cluster.url, "ts_docs").json()["model_version"] == "2"
    finally:
        admin.delete(f"{url}/ts_docs")
    assert infer(requests, cluster.url, "ts_docs").status_code == 404


def test_registering_and_inferring_back_to_back_never_sees_a_404(cluster, admin, http):
    """The generic pool learns each change before the call answers: register, set-default, unregister, at once."""
    url = f"{cluster.url}/models"
    for round_ in range(2):
        name = f"ts_rw{round_}"
        if round_:  # again and again: register, infer at once, unregister, infer at once
            assert admin.post(url, params={"url": "iris-1.zip", "model_name": name}).status_code == 200
            assert infer(http, cluster.url, name).status_code == 200, f"round {round_}: 404 after register answered"
            assert admin.delete(f"{url}/{name}").status_code == 200
            assert infer(http, cluster.url, name).status_code == 404, f"round {round_}: served after unregister"
            continue
        for archive, version in (("iris-1.zip", "1"), ("iris-2.zip", "2")):
            registered = admin.post(url, params={"url": archive, "model_name": name})
            assert registered.status_code == 200, registered.text
            first = infer(http, cluster.url, name)
            assert first.status_code == 200, f"round {round_}, version {version}: {first.status_code} {first.text}"
            assert first.json()["model_version"] == version  # the newest is the default, at once
        for version in ("1", "2", "1"):
            assert admin.put(f"{url}/{name}/{version}/set-default").status_code == 200
            assert infer(http, cluster.url, name).json()["model_version"] == version
        assert admin.delete(f"{url}/{name}/1").status_code == 200
        assert infer(http, cluster.url, name, "1").status_code == 404
        assert infer(http, cluster.url, name).json()["model_version"] == "2"
        assert admin.delete(f"{url}/{name}").status_code == 200
        gone = infer(http, cluster.url, name)
        assert gone.status_code == 404, f"round {round_}: still served after unregister: {gone.text}"


def test_a_refused_url_is_403_saying_why_and_what_to_change(cluster, admin):
    refused = admin.post(f"{cluster.url}/models",
                         params={"url": "https://torchserve.pytorch.org/mar_files/squeezenet1_1.mar"})
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["field"] == "url" and "MODELPOOL_ALLOWED_URLS" in body["error"] and "not allowed" in body["error"]


def test_options_describes_inference_and_management_in_openapi_3_0(cluster, admin):
    described = admin.options(f"{cluster.url}/")
    assert described.status_code == 200
    spec = described.json()
    assert spec["openapi"] == "3.0.1"
    assert {"/models", "/predictions/{model_name}", "/v1/models/{model_name}:predict",
            "/v2/models/{model_name}/infer", "/ping"} <= set(spec["paths"])
