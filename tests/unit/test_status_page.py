"""What ``GET /ui/state`` answers, built from plain inputs (``status_page.page_state``): no Ray, no object store."""
from __future__ import annotations

from typing import Optional

from modelpool.management.batch.jobs import JobRecord
from modelpool.management.registry import GraphRecord, ModelRecord, PoolRecord
from modelpool.management.status_page import FINISHED_JOBS_SHOWN, page_state

NOW = 1_767_000_000.0


def record(name: str, version: str, workers: int = 0, max_workers: Optional[int] = None) -> ModelRecord:
    return ModelRecord(name=name, version=version, url=f"{name}-{version}.zip", source=f"archives/{name}/{version}",
                       handler="sklearn", runtime="python", batch_size=8, max_batch_delay_ms=5, initial_workers=workers,
                       min_workers=workers, max_workers=workers if max_workers is None else max_workers,
                       response_timeout_s=120)


def replica(replica_id: str, node: str, state: str = "RUNNING") -> dict:
    return {"replica_id": replica_id, "node_id": node, "node_ip": f"10.0.0.{node[-1]}", "state": state, "pid": 1}


def app(status: str, *replicas: dict) -> dict:
    return {"status": status, "deployments": {"D": {"replicas": list(replicas)}}}


DETAILS = {"applications": {
    "model:iris:1": app("RUNNING", replica("i1", "node1"), replica("i2", "node2", "STARTING")),
    "model:iris:2": app("DEPLOYING"),
    "generic-pool": app("RUNNING", replica("g1", "node1"), replica("g2", "node2")),
    "graph:chain": app("RUNNING", replica("c1", "node1")),
    "management": app("RUNNING", replica("m1", "node1")),
}}
NODES = [{"NodeID": "node1", "NodeManagerAddress": "10.0.0.1", "Alive": True,
          "Resources": {"node:__internal_head__": 1}},
         {"NodeID": "node2", "NodeManagerAddress": "10.0.0.2", "Alive": True, "Resources": {}},
         {"NodeID": "node3", "NodeManagerAddress": "10.0.0.3", "Alive": False, "Resources": {}}]
BOARD = {
    "stats": [{"model": "iris", "version": "1", "requests": 600, "errors": 6, "requestsPerSecond": 10.0,
               "errorsPerSecond": 0.1, "p50Ms": 2.1, "p99Ms": 8.0, "windowS": 60.0},
              {"model": "chain", "version": "graph", "requests": 60, "errors": 0, "requestsPerSecond": 1.0,
               "errorsPerSecond": 0.0, "p50Ms": 9.0, "p99Ms": 12.0, "windowS": 60.0}],
    "replicas": [{"model": "iris", "version": "1", "replicaId": "i1", "nodeId": "node1", "lastReport": NOW - 1},
                 {"model": "diabetes", "version": "1", "replicaId": "g2", "nodeId": "node2", "lastReport": NOW - 3}],
    "errors": [{"time": NOW - 2, "model": "iris", "version": "1", "replicaId": "i1", "status": 500,
                "message": "model 'iris' version '1' failed: ValueError: x", "requestId": "req-1"}],
}


def job(execution_id: str, state: str, total: Optional[int], done: int, failed: int = 0,
        created: float = NOW) -> JobRecord:
    return JobRecord(execution_id=execution_id, service="iris", version="1", state=state, parallel_count=2,
                     total_items=total, completed_items=done, failed_items=failed, created_at=created,
                     updated_at=created)


def state(**changes) -> dict:
    inputs = dict(now=NOW, records=[record("iris", "1", 1, 2), record("iris", "2", 1), record("diabetes", "1"),
                                    record("pooled", "3")],
                  defaults={"iris": "1", "diabetes": "1", "pooled": None},
                  pools=[PoolRecord(name="pooled", version="3", initial_pool_size=1, max_pool_size=4)],
                  graphs=[GraphRecord(name="chain", graph={"name": "scale", "type": "TRANSFORMER", "children": [
                      {"name": "iris", "type": "MODEL"}, {"name": "audit", "type": "MODEL"}]})],
                  details=DETAILS, nodes=NODES, board=BOARD, jobs=[])
    inputs.update(changes)
    return page_state(**inputs)


def versions_of(answer: dict, name: str) -> dict:
    model = next(m for m in answer["models"] if m["name"] == name)
    return {v["version"]: v for v in model["versions"]}


def test_the_keys_the_page_reads():
    answer = state()
    assert set(answer) == {"generatedAt", "models", "nodes", "pools", "graphs", "batches", "errors", "statsAvailable",
                           "unavailable"}
    assert answer["generatedAt"] == NOW and answer["statsAvailable"] is True and answer["unavailable"] == []
    assert [m["name"] for m in answer["models"]] == ["diabetes", "iris", "pooled"]


def test_a_dedicated_version_with_its_replicas_nodes_and_last_minute():
    iris = next(m for m in state()["models"] if m["name"] == "iris")
    assert iris["defaultVersion"] == "1"
    one = iris["versions"][0]
    assert one == {
        "version": "1", "isDefault": True, "pool": "dedicated", "minWorkers": 1, "maxWorkers": 2, "status": "RUNNING",
        "replicas": [{"replicaId": "i1", "nodeId": "node1", "nodeIp": "10.0.0.1", "state": "RUNNING",
                      "lastReport": NOW - 1},
                     {"replicaId": "i2", "nodeId": "node2", "nodeIp": "10.0.0.2", "state": "STARTING",
                      "lastReport": None}],
        "stats": {"requestsPerSecond": 10.0, "p50Ms": 2.1, "p99Ms": 8.0, "errorsPerSecond": 0.1, "windowS": 60.0,
                  "requests": 600, "errors": 6}}
    two = iris["versions"][1]
    assert (two["isDefault"], two["status"], two["replicas"]) == (False, "DEPLOYING", [])
    assert two["stats"]["requestsPerSecond"] == 0.0 and two["stats"]["p50Ms"] is None


def test_generic_and_pool_versions():
    diabetes = versions_of(state(), "diabetes")["1"]
    assert (diabetes["pool"], diabetes["minWorkers"], diabetes["maxWorkers"], diabetes["status"]) == ("generic", 0, 0,
                                                                                                       "RUNNING")
    # the generic pool's replicas that reported this model to the board (the ones that loaded it)
    assert [r["replicaId"] for r in diabetes["replicas"]] == ["g2"]
    pooled = versions_of(state(), "pooled")
    assert (pooled["3"]["pool"], pooled["3"]["minWorkers"], pooled["3"]["maxWorkers"]) == ("pool", 1, 4)
    assert pooled["3"]["status"] == "NOT_DEPLOYED" and pooled["3"]["isDefault"] is True  # newest when none is stored
    assert state()["pools"] == [{"name": "pooled", "version": "3", "initialPoolSize": 1, "maxPoolSize": 4,
                                 "status": "NOT_DEPLOYED"}]


def test_nodes_count_every_replica_there_and_dead_nodes_only_while_something_is_placed_on_them():
    assert state()["nodes"] == [
        {"nodeId": "node1", "nodeIp": "10.0.0.1", "alive": True, "isHead": True, "replicas": 4},
        {"nodeId": "node2", "nodeIp": "10.0.0.2", "alive": True, "isHead": False, "replicas": 2}]
    details = {"applications": {**DETAILS["applications"], "model:iris:2": app("RUNNING", replica("x", "node3"))}}
    assert [(n["nodeId"], n["alive"]) for n in state(details=details)["nodes"]][-1] == ("node3", False)


def test_graphs_with_their_nodes_and_traffic():
    assert state()["graphs"] == [{"name": "chain", "status": "RUNNING", "nodes": ["scale", "iris", "audit"],
                                  "stats": {"requestsPerSecond": 1.0, "p50Ms": 9.0, "p99Ms": 12.0,
                                            "errorsPerSecond": 0.0, "windowS": 60.0, "requests": 60, "errors": 0}}]


def test_batch_jobs_with_progress_unfinished_and_the_newest_finished_first():
    jobs = [job("a" * 32, "Running", 1000, 240, 10, created=NOW - 5),
            job("b" * 32, "Pending", None, 0, created=NOW - 1),
            *[job(f"{i:032x}", "Complete", 10, 10, created=NOW - 100 - i) for i in range(FINISHED_JOBS_SHOWN + 5)],
            job("c" * 32, "Running", 10, 0, created=NOW - 10_000)]  # older than every finished one, still shown
    batches = state(jobs=jobs)["batches"]
    assert batches[0] == {"executionId": "b" * 32, "model": "iris", "version": "1", "state": "pending",
                          "rowsTotal": None, "rowsDone": 0, "rowsFailed": 0, "progress": 0.0,
                          "createdAt": NOW - 1, "updatedAt": NOW - 1}
    assert (batches[1]["state"], batches[1]["rowsDone"], batches[1]["progress"]) == ("running", 250, 0.25)
    assert len(batches) == 2 + FINISHED_JOBS_SHOWN + 1 and batches[-1]["executionId"] == "c" * 32
    assert all(b["state"] == "complete" and b["progress"] == 1.0 for b in batches[2:-1])


def test_errors_as_the_board_keeps_them():
    assert state()["errors"] == BOARD["errors"]


def test_without_the_board_or_serve_the_rest_still_shows():
    answer = state(board=None, details={}, unavailable=["stats", "serve"])
    assert answer["statsAvailable"] is False and answer["unavailable"] == ["serve", "stats"]
    assert answer["errors"] == []
    one = versions_of(answer, "iris")["1"]
    assert (one["status"], one["replicas"], one["stats"]["requestsPerSecond"]) == ("NOT_DEPLOYED", [], 0.0)
