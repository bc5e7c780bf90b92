"""TorchServe's inference API and KServe V1 on the real cluster, called as their documentation calls them.

TorchServe's documented calls (curl -T is a PUT of the raw file, curl -F a multipart ``data`` field, and the
docs' Python example ``requests.post(..., files={'data': ...})``), KServe V1's readiness, predict and explain,
for the default version, a given version, a model of the generic pool and a model registered a moment ago;
answers compared with the V2 route's for the same rows, errors in each protocol's shape.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.integration

ROW = [5.1, 3.5, 1.4, 0.2]
ROWS = [ROW, [6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 4.2, 1.5]]


def v2_predict(http, url: str, path: str, rows) -> tuple[list, str]:
    """The V2 route's predictions for ``rows`` and the replica that answered."""
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}]}
    answer = http.post(f"{url}/v2/models/{path}/infer", json=body)
    assert answer.status_code == 200, answer.text
    predict = next(o for o in answer.json()["outputs"] if o["name"] == "predict")
    return predict["data"], answer.headers["x-modelpool-replica"]


@pytest.fixture(scope="module")
def pooled(cluster) -> str:
    """iris v1 registered again as a generic-pool model, inferred right after register answers."""
    with requests.Session() as admin:
        admin.headers.update(cluster.auth)
        registered = admin.post(f"{cluster.url}/models", params={"url": "iris-1.zip", "model_name": "compat_pool",
                                                                  "initial_workers": 0, "synchronous": "true"})
        assert registered.status_code == 200, registered.text
        yield "compat_pool"
        # the trailing slash as scripts write it: the same route, not a redirect curl -X DELETE would not follow
        gone = admin.delete(f"{cluster.url}/models/compat_pool/", allow_redirects=False)
        assert gone.status_code == 200 and gone.json() == {"status": 'Model "compat_pool" unregistered'}, gone.text


def test_torchserve_documented_calls_on_the_default_and_a_given_version(cluster, http, tmp_path):
    default, default_replica = v2_predict(http, cluster.url, "iris", ROWS)
    v1, v1_replica = v2_predict(http, cluster.url, "iris/versions/1", ROWS)

    row = http.post(f"{cluster.url}/predictions/iris", json=ROW)  # -H "Content-Type: application/json" -d '[...]'
    assert row.status_code == 200, row.text
    assert row.json() == default[0] and row.headers["x-modelpool-replica"] == default_replica

    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(",".join(map(str, r)) for r in ROWS) + "\n")
    with csv.open("rb") as upload:  # curl http://.../predictions/iris/1 -T rows.csv
        uploaded = http.put(f"{cluster.url}/predictions/iris/1", data=upload)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == v1 and uploaded.headers["x-modelpool-replica"] == v1_replica

    with csv.open("rb") as upload:  # the docs' Python example: files={'data': open(...)}
        form = http.post(f"{cluster.url}/predictions/iris/2", files={"data": upload})
    assert form.json() == default

    explained = http.post(f"{cluster.url}/explanations/iris", json=ROW)  # TorchServe's explain route
    assert explained.status_code == 501 and explained.json()["code"] == 501, explained.text


def test_kserve_v1_readiness_predict_and_explain(cluster, http):
    default, default_replica = v2_predict(http, cluster.url, "iris", ROWS)
    v1, v1_replica = v2_predict(http, cluster.url, "iris/versions/1", ROWS)
    assert http.get(f"{cluster.url}/v1/models/iris").json() == {"name": "iris", "ready": True}
    assert {"iris", "diabetes"} <= set(http.get(f"{cluster.url}/v1/models").json()["models"])

    predicted = http.post(f"{cluster.url}/v1/models/iris:predict", json={"instances": ROWS})
    assert predicted.status_code == 200, predicted.text
    assert predicted.json() == {"predictions": default} and predicted.headers["x-modelpool-replica"] == default_replica
    versioned = http.post(f"{cluster.url}/v1/models/iris/versions/1:predict", json={"instances": ROWS})
    assert versioned.json() == {"predictions": v1} and versioned.headers["x-modelpool-replica"] == v1_replica

    explained = http.post(f"{cluster.url}/v1/models/iris:explain", json={"instances": ROWS})
    assert explained.status_code == 501 and "explainer" in explained.json()["error"]


def test_a_generic_pool_model_answers_both_protocols_once_registered(cluster, http, pooled):
    v1, _ = v2_predict(http, cluster.url, "iris/versions/1", ROWS)
    torch = http.post(f"{cluster.url}/predictions/{pooled}", json=ROWS)
    assert torch.status_code == 200, torch.text
    assert torch.json() == v1 and torch.headers["x-modelpool-pool"] == "generic"
    kserve = http.post(f"{cluster.url}/v1/models/{pooled}/versions/1:predict", json={"instances": ROWS})
    assert kserve.json() == {"predictions": v1} and kserve.headers["x-modelpool-pool"] == "generic"
    assert http.get(f"{cluster.url}/v1/models/{pooled}").json() == {"name": pooled, "ready": True}
    assert pooled in http.get(f"{cluster.url}/v1/models").json()["models"]


def test_a_model_registered_with_workers_is_routed_to_its_own_replicas_at_once(cluster, http, admin):
    registered = admin.post(f"{cluster.url}/models", params={"url": "iris-2.zip", "model_name": "compat_dedicated",
                                                             "initial_workers": 1, "synchronous": "true"})
    assert registered.status_code == 200, registered.text
    try:
        torch = http.post(f"{cluster.url}/predictions/compat_dedicated", json=ROW)
        assert torch.status_code == 200, torch.text
        assert "x-modelpool-pool" not in torch.headers  # its own replica, not the generic pool
        kserve = http.post(f"{cluster.url}/v1/models/compat_dedicated/versions/2:predict", json={"instances": [ROW]})
        assert kserve.json() == {"predictions": [torch.json()]}
        assert kserve.headers["x-modelpool-replica"] == torch.headers["x-modelpool-replica"]
    finally:
        admin.delete(f"{cluster.url}/models/compat_dedicated")


def test_errors_come_in_each_protocols_shape(cluster, http):
    unknown = http.post(f"{cluster.url}/predictions/nosuch", json=ROW)
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "ModelNotFoundException" and "iris" in unknown.json()["message"]
    version = http.post(f"{cluster.url}/predictions/iris/9", json=ROW)
    assert (version.status_code, version.json()["type"]) == (404, "ModelVersionNotFoundException")
    bad = http.post(f"{cluster.url}/predictions/iris", data=b'{"rows": [1]}',
                    headers={"Content-Type": "application/json"})
    assert (bad.status_code, bad.json()["code"], bad.json()["field"]) == (400, 400, "body")
    assert '{"instances": rows}' in bad.json()["message"]

    missing = http.get(f"{cluster.url}/v1/models/nosuch")
    assert missing.status_code == 404 and missing.json()["field"] == "model_name"
    ragged = http.post(f"{cluster.url}/v1/models/iris:predict", json={"instances": [ROW, [1.0]]})
    assert (ragged.status_code, ragged.json()["field"]) == (400, "instances[1]")


def test_protocol_calls_batch_with_v2_calls(cluster):
    """Sent together, TorchServe, KServe V1 and V2 calls share model calls (x-modelpool-batch-size above 1)."""
    v2 = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [ROW]}]}
    calls = [(f"{cluster.url}/predictions/iris", ROW), (f"{cluster.url}/v1/models/iris:predict", {"instances": [ROW]}),
             (f"{cluster.url}/v2/models/iris/infer", v2)] * 16

    def post(session: requests.Session, call) -> requests.Response:
        return session.post(call[0], data=json.dumps(call[1]), headers={"Content-Type": "application/json"})

    with requests.Session() as session, ThreadPoolExecutor(16) as pool:
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=16))
        for _ in range(5):  # a few rounds: at low concurrency a round can go out one call at a time
            answers = list(pool.map(lambda call: post(session, call), calls))
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
            if max(int(a.headers["x-modelpool-batch-size"]) for a in answers[::3]) > 1:
                return
    pytest.fail("no TorchServe call shared a model call in 5 rounds of 48 concurrent calls")
