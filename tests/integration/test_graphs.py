"""Inference graphs on the real cluster: Seldon's roles composed over the example iris versions, a canary split,
shadow traffic, live changes, the refusals, and the graph over gRPC as tritonclient sends it.

The role handlers are archives registered like any model (service_type in the manifest); one graph name is
replaced by each test where it can (a PUT of a known graph is applied in place: no new replica)."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from modelpool.cluster.settings import load_settings
from modelpool.deployments.examples import archive_command
from tests.integration.test_observability import wait_for_metric

ROLES = """
import time

import numpy as np


class Millimetres:
    '''TRANSFORMER: readings sent in millimetres, the model was fitted in centimetres.'''
    def transform_input(self, X, features_names):
        return np.asarray(X, dtype=float) / 10


class Labels:
    '''TRANSFORMER (output only): class indices as species names.'''
    def transform_output(self, X):
        return np.asarray(["setosa", "versicolor", "virginica"])[np.asarray(X).astype(int)]


class ByPetal:
    '''ROUTER: long petals to the second child.'''
    def route(self, X, features_names):
        return 1 if np.asarray(X)[:, 2].max() > 2.5 else 0


class Nowhere:
    '''ROUTER with a bug: a child that does not exist.'''
    def route(self, X):
        return 5


class Learner:
    '''ROUTER that learns from Seldon's feedback: a negative reward for a child sends traffic to the other.'''
    def __init__(self):
        self.bad = set()

    def route(self, X, features_names):
        return 1 if 0 in self.bad else 0

    def send_feedback(self, features, feature_names, reward, truth, routing=None):
        if reward < 0:
            self.bad.add(routing)


class MeanProba:
    '''COMBINER: the mean of the children's probabilities.'''
    def aggregate(self, Xs, features_names_list):
        return np.mean(np.asarray(Xs, dtype=float), axis=0)


class Distance:
    '''OUTLIER_DETECTOR: distance from the origin over a limit (Seldon's --parameters).'''
    def __init__(self, limit=1.0):
        self.limit = limit

    def score(self, X, features_names):
        return np.linalg.norm(np.asarray(X, dtype=float), axis=1) / self.limit
"""
SLEEPY = """
import time
import numpy as np

def predict(data):
    time.sleep(1.0)
    return np.zeros(len(data))
"""
BROKEN = """
def predict(data):
    raise RuntimeError("this shadow always fails")
"""
ROLE_ARCHIVES = [("mm_to_cm", "Millimetres", "TRANSFORMER", None), ("labels", "Labels", "TRANSFORMER", None),
                 ("by_petal", "ByPetal", "ROUTER", None), ("nowhere", "Nowhere", "ROUTER", None),
                 ("learner", "Learner", "ROUTER", None),
                 ("mean_proba", "MeanProba", "COMBINER", None),
                 ("distance", "Distance", "OUTLIER_DETECTOR", [{"name": "limit", "type": "FLOAT", "value": "10"}])]
SHORT, LONG = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]


def v2(rows, outputs=None) -> dict:
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64",
                        "data": [x for row in rows for x in row]}]}
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def output(answer: requests.Response, name: str = "predict") -> list:
    assert answer.status_code == 200, answer.text
    return next(o["data"] for o in answer.json()["outputs"] if o["name"] == name)


@pytest.fixture(scope="module")
def roles(cluster, tmp_path_factory) -> list[str]:
    """The role archives and two shadow models, registered once for the module (generic pool: no replicas)."""
    work: Path = tmp_path_factory.mktemp("roles")
    store = load_settings({}, cluster.env).model_store_path
    (work / "roles.py").write_text(ROLES)
    (work / "sleepy.py").write_text(SLEEPY)
    (work / "broken.py").write_text(BROKEN)
    archives = [archive_command(name, "1", f"roles:{cls}", [work / "roles.py"], service_type=kind,
                                parameters=params, out=store / f"{name}-1.zip")
                for name, cls, kind, params in ROLE_ARCHIVES]
    archives += [archive_command(name, "1", f"{module}:predict", [work / f"{module}.py"], out=store / f"{name}-1.zip")
                 for name, module in (("graph_sleepy", "sleepy"), ("graph_broken", "broken"))]

    def register(archive: Path) -> requests.Response:
        with requests.Session() as session:
            session.headers.update(cluster.auth)
            return session.post(f"{cluster.url}/models", params={"url": archive.name, "synchronous": "true"})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(register, archives))
    assert [a.status_code for a in answers] == [200] * len(archives), [a.text for a in answers]
    names = [name for name, *_ in ROLE_ARCHIVES] + ["graph_sleepy", "graph_broken"]
    yield names
    with requests.Session() as session:  # the models stay: generic-pool entries, and unregistering 8 took 40 s
        session.headers.update(cluster.auth)
        for graph in session.get(f"{cluster.url}/graphs").json()["graphs"]:
            session.delete(f"{cluster.url}/graphs/{graph['name']}")


def put_graph(admin, cluster, name: str, root: dict, expected=(200, 201)) -> requests.Response:
    answer = admin.put(f"{cluster.url}/graphs/{name}", json={"graph": root})
    assert answer.status_code in expected, answer.text
    return answer


def iris(version: str, name: str, **extra) -> dict:
    return {"name": name, "type": "MODEL", "model": "iris", "version": version, **extra}


def test_transformer_model_transformer_over_rest_and_grpc(cluster, admin, http, roles):
    import tritonclient.grpc as triton_grpc

    chain = {"name": "mm", "type": "TRANSFORMER", "model": "mm_to_cm", "children": [
        iris("1", "classify", children=[{"name": "label", "type": "TRANSFORMER", "model": "labels"}])]}
    created = put_graph(admin, cluster, "flow", chain)
    assert created.json()["endpoint"] == "/v2/models/flow/infer"
    direct = output(http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=v2([SHORT, LONG])))
    assert direct == [0, 2]
    answer = http.post(f"{cluster.url}/v2/models/flow/infer", json=v2([[x * 10 for x in SHORT], [x * 10 for x in LONG]]))
    assert output(answer) == ["setosa", "virginica"], "millimetres in, species names out"
    assert answer.headers["x-modelpool-graph-path"] == "mm,classify,label"
    assert answer.json()["parameters"]["graph_path"] == "mm,classify,label"
    assert answer.json()["model_name"] == "flow"
    metadata = http.get(f"{cluster.url}/v2/models/flow").json()
    assert metadata["name"] == "flow" and metadata["platform"] == "modelpool_graph"

    client = triton_grpc.InferenceServerClient(cluster.grpc_target)
    try:
        tensor = triton_grpc.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(np.asarray([[x * 10 for x in LONG]]))
        result = client.infer("flow", [tensor])
        assert result.as_numpy("predict").tolist() == [b"virginica"]
        assert result.get_response().parameters["graph_path"].string_param == "mm,classify,label"
    finally:
        client.close()
    described = admin.get(f"{cluster.url}/graphs/flow").json()
    assert described["status"] == "RUNNING" and described["graph"]["children"][0]["model"] == "iris"
    assert "flow" in [g["name"] for g in admin.get(f"{cluster.url}/graphs").json()["graphs"]]


def test_a_graph_answers_torchserves_and_kserve_v1s_routes_as_a_model_does(cluster, admin, http, roles):
    chain = {"name": "mm", "type": "TRANSFORMER", "model": "mm_to_cm", "children": [
        iris("1", "classify", children=[{"name": "label", "type": "TRANSFORMER", "model": "labels"}])]}
    put_graph(admin, cluster, "flow", chain)
    rows = [[x * 10 for x in SHORT], [x * 10 for x in LONG]]
    torchserve = http.post(f"{cluster.url}/predictions/flow", json=rows)
    assert torchserve.status_code == 200 and torchserve.json() == ["setosa", "virginica"], torchserve.text
    assert torchserve.headers["x-modelpool-graph-path"] == "mm,classify,label"
    kserve = http.post(f"{cluster.url}/v1/models/flow:predict", json={"instances": rows})
    assert kserve.status_code == 200 and kserve.json() == {"predictions": ["setosa", "virginica"]}, kserve.text
    assert http.get(f"{cluster.url}/v1/models/flow").json() == {"name": "flow", "ready": True}


def test_a_batch_job_scores_through_a_graph_as_through_a_model(cluster, admin, http, roles):
    from tests.integration.test_batches import COLUMNS, IRIS, wait_state

    chain = {"name": "mm", "type": "TRANSFORMER", "model": "mm_to_cm", "children": [
        iris("1", "classify", children=[{"name": "label", "type": "TRANSFORMER", "model": "labels"}])]}
    put_graph(admin, cluster, "flow", chain)
    records = [dict(zip(COLUMNS, map(float, row * 10))) for row in IRIS.data[:40]]
    started = admin.post(f"{cluster.url}/batches", json={"service": "flow", "records": records, "parallel_count": 2})
    assert started.status_code == 202, started.text
    done = wait_state(admin, f"{cluster.url}/batches/{started.json()['executionId']}")
    assert (done["state"], done["completedItems"], done["failedItems"]) == ("Complete", 40, 0), done["results"][:1]
    direct = output(http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=v2(IRIS.data[:40].tolist())))
    names = np.asarray(["setosa", "versicolor", "virginica"])[direct].tolist()
    assert [row["outputs"]["predict"] for row in done["results"]] == names


def test_a_router_over_two_versions_and_a_combiner_of_their_probabilities(cluster, admin, http, roles):
    put_graph(admin, cluster, "flow", {"name": "router", "type": "ROUTER", "model": "by_petal",
                                       "children": [iris("1", "v1"), iris("2", "v2")]}, expected=(200,))
    short = http.post(f"{cluster.url}/v2/models/flow/infer", json=v2([SHORT]))
    long = http.post(f"{cluster.url}/v2/models/flow/infer", json=v2([LONG]))
    assert short.headers["x-modelpool-graph-path"] == "router,v1"
    assert long.headers["x-modelpool-graph-path"] == "router,v2"
    assert json.loads(long.json()["parameters"]["routing"]) == {"router": 1}

    put_graph(admin, cluster, "flow", {"name": "learner", "type": "ROUTER", "model": "learner",
                                       "children": [iris("1", "v1"), iris("2", "v2")]}, expected=(200,))
    first = http.post(f"{cluster.url}/v2/models/flow/infer", json=v2([SHORT]))
    assert first.headers["x-modelpool-graph-path"] == "learner,v1"
    told = http.post(f"{cluster.url}/v2/models/flow/feedback", json={
        "reward": -1, "routing": first.json()["parameters"]["routing"], "request": v2([SHORT])})
    assert told.status_code == 200 and told.json()["routers"] == ["learner"], told.text
    after = http.post(f"{cluster.url}/v2/models/flow/infer", json=v2([SHORT]))
    assert after.headers["x-modelpool-graph-path"] == "learner,v2", "the router took the reward"
    wrong = http.post(f"{cluster.url}/v2/models/flow/feedback", json={"reward": 1, "routing": {"nobody": 0}})
    assert wrong.status_code == 400 and wrong.json()["field"] == "routing", wrong.text

    proba = ["predict_proba"]
    put_graph(admin, cluster, "flow", {"name": "mean", "type": "COMBINER", "model": "mean_proba", "children": [
        iris("1", "lr", outputs=proba), iris("2", "tree", outputs=proba)]}, expected=(200,))
    rows = [SHORT, LONG, [5.9, 3.0, 4.2, 1.5]]
    one = np.asarray(output(http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=v2(rows, proba)), proba[0]))
    two = np.asarray(output(http.post(f"{cluster.url}/v2/models/iris/versions/2/infer", json=v2(rows, proba)), proba[0]))
    combined = http.post(f"{cluster.url}/v2/models/flow/infer", json=v2(rows))
    assert np.allclose(output(combined, proba[0]), (one + two) / 2)
    assert combined.headers["x-modelpool-graph-path"] == "mean,lr,tree"


def test_an_outlier_detector_tags_the_answer_without_changing_it(cluster, admin, http, roles):
    put_graph(admin, cluster, "flow", {"name": "od", "type": "OUTLIER_DETECTOR", "model": "distance",
                                       "children": [iris("1", "classify")]}, expected=(200,))
    far = [60.0, 30.0, 50.0, 20.0]
    tagged = http.post(f"{cluster.url}/v2/models/flow/infer", json=v2([SHORT, far]))
    direct = http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=v2([SHORT, far]))
    assert output(tagged) == output(direct)
    scores = json.loads(tagged.json()["parameters"]["outlier_scores"])["od"]
    assert np.allclose(scores, np.linalg.norm([SHORT, far], axis=1) / 10), "limit=10 from the archive's parameters"


def test_a_canary_holds_its_split_a_key_sticks_and_weights_change_live(cluster, admin, http, roles):
    split = {"name": "canary", "type": "ROUTER", "implementation": "SPLIT", "weights": [90, 10],
             "routing_header": "x-user", "children": [iris("1", "stable"), iris("2", "next")]}
    put_graph(admin, cluster, "canary", split)

    sessions = threading.local()

    def route(_: int, headers=None) -> tuple[str, str]:
        if not hasattr(sessions, "one"):
            sessions.one = requests.Session()  # kept alive, as a client's would be
        answer = sessions.one.post(f"{cluster.url}/v2/models/canary/infer", json=v2([SHORT]), headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.headers["x-modelpool-graph-path"], answer.headers["x-modelpool-replica"]

    with ThreadPoolExecutor(8) as pool:
        paths = [path for path, _ in pool.map(route, range(2000))]
    share = paths.count("canary,next") / len(paths)
    assert 0.07 <= share <= 0.13, f"{share:.3f} of 2,000 requests went to the 10% version"
    assert len({route(i, {"x-user": "alice"})[0] for i in range(20)}) == 1, "one user, one version"

    _, replica = route(0)
    put_graph(admin, cluster, "canary", {**split, "weights": [0, 1]}, expected=(200,))
    path, same_replica = route(0)
    assert path == "canary,next", "the answered weight change is seen by the very next request"
    assert same_replica == replica, "applied in place, no restart"


def test_a_shadow_gets_every_request_and_the_client_only_the_primary(cluster, admin, http, roles):
    put_graph(admin, cluster, "mirror", {"name": "mirror", "type": "ROUTER", "implementation": "SHADOW", "children": [
        iris("1", "live"), {"name": "slow", "model": "graph_sleepy"}, {"name": "failing", "model": "graph_broken"}]})
    direct = output(http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=v2([LONG])))
    took = []
    for _ in range(20):
        started = time.perf_counter()
        answer = http.post(f"{cluster.url}/v2/models/mirror/infer", json=v2([LONG]))
        took.append(time.perf_counter() - started)
        assert output(answer) == direct and answer.headers["x-modelpool-graph-path"] == "mirror,live"
    assert max(took) < 0.5, f"a 1 s shadow held an answer: {max(took):.2f} s"
    name = "ray_modelpool_graph_node_requests_total"
    assert wait_for_metric(cluster.metrics_url, name, 20, graph="mirror", node="slow", traffic="shadow",
                           status="200") >= 20
    assert wait_for_metric(cluster.metrics_url, name, 20, graph="mirror", node="failing", traffic="shadow",
                           status="500") >= 20
    assert wait_for_metric(cluster.metrics_url, name, 20, graph="mirror", node="live", traffic="primary",
                           status="200") >= 20
    assert admin.delete(f"{cluster.url}/graphs/mirror").status_code == 200
    assert http.post(f"{cluster.url}/v2/models/mirror/infer", json=v2([LONG])).status_code == 404
    assert admin.get(f"{cluster.url}/graphs/mirror").status_code == 404


@pytest.mark.parametrize("root, node, words", [
    ({"name": "a", "graph": "loop"}, "a", "cycle"),
    ({"name": "a", "model": "nope"}, "a", "not registered"),
    ({"name": "a", "model": "iris", "version": "9"}, "a", "not registered"),
    ({"name": "c", "type": "COMBINER", "model": "mean_proba", "children": [iris("1", "only")]}, "c", "at least 2"),
    ({"name": "t", "type": "TRANSFORMER", "model": "mm_to_cm", "children": [iris("1", "x"), iris("2", "y")]}, "t",
     "at most 1"),
    ({"name": "s", "type": "ROUTER", "implementation": "SPLIT", "weights": [-1, 2],
      "children": [iris("1", "x"), iris("2", "y")]}, "s", "negative"),
    ({"name": "s", "type": "ROUTER", "implementation": "SPLIT", "weights": [0, 0],
      "children": [iris("1", "x"), iris("2", "y")]}, "s", "add up to 0"),
    ({"name": "m", "type": "TRANSFORMER", "model": "iris"}, "m", "is a MODEL"),
])
def test_a_bad_graph_is_a_400_naming_the_node_and_leaves_nothing_behind(cluster, admin, roles, root, node, words):
    refused = admin.put(f"{cluster.url}/graphs/loop", json={"graph": root})
    assert refused.status_code == 400, refused.text
    assert refused.json()["field"] == f"node:{node}" and words in refused.json()["error"], refused.text
    assert admin.get(f"{cluster.url}/graphs/loop").status_code == 404


def test_what_graphs_refuse_and_pass_through_at_serving_time(cluster, admin, http, roles):
    put_graph(admin, cluster, "flow", {"name": "classify", "model": "iris", "version": "1"})
    refused = admin.delete(f"{cluster.url}/models/iris/1")
    assert refused.status_code == 409 and "flow" in refused.json()["error"], refused.text
    assert http.post(f"{cluster.url}/v2/models/iris/versions/1/infer", json=v2([SHORT])).status_code == 200
    taken = admin.post(f"{cluster.url}/models", params={"url": "iris-1.zip", "model_name": "flow"})
    assert taken.status_code == 409 and taken.json()["field"] == "model_name", taken.text
    named = admin.put(f"{cluster.url}/graphs/iris", json={"graph": iris("1", "x")})
    assert named.status_code == 409, named.text

    wrong = http.post(f"{cluster.url}/v2/models/flow/infer", json={"inputs": [
        {"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]})
    assert wrong.status_code == 422 and wrong.json()["field"] == "node:classify", wrong.text
    assert "graph 'flow' node 'classify'" in wrong.json()["error"] and "send rows of [4]" in wrong.json()["error"]

    put_graph(admin, cluster, "flow", {"name": "lost", "type": "ROUTER", "model": "nowhere",
                                       "children": [iris("1", "x"), iris("2", "y")]}, expected=(200,))
    lost = http.post(f"{cluster.url}/v2/models/flow/infer", json=v2([SHORT]))
    assert lost.status_code == 500 and lost.json()["field"] == "node:lost", lost.text
    assert "route returned 5" in lost.json()["error"]


def test_a_killed_model_replica_costs_graph_callers_only_retryable_503s(ray_client, admin, http, roles):
    """SIGKILL the replica a graph's model node calls: answers are 200 or 503 (with the node named) until its new
    replica answers, never a 500 or a hang."""
    import ray

    from modelpool.management.serve_state import serve_details

    cluster = ray_client
    put_graph(admin, cluster, "flow", iris("1", "classify"))
    before = http.post(f"{cluster.url}/v2/models/flow/infer", json=v2([SHORT]))
    assert before.status_code == 200, before.text
    replica = serve_details()["applications"]["model:iris:1"]["deployments"]["iris_v1"]["replicas"][0]
    ray.kill(ray.get_actor(replica["actor_name"], namespace="serve"), no_restart=True)
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + 90
    in_a_row = 0
    while time.monotonic() < deadline and in_a_row < 20:
        answer = http.post(f"{cluster.url}/v2/models/flow/infer", json=v2([SHORT]), timeout=60)
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        if answer.status_code == 200:
            in_a_row += 1
            continue
        in_a_row = 0
        assert answer.status_code == 503 and answer.json()["field"] == "node:classify", answer.text
        time.sleep(0.1)
    assert in_a_row >= 20, f"the graph did not recover within 90 s: {statuses}"
    assert set(statuses) <= {200, 503}, statuses
