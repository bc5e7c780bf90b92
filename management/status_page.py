"""What ``GET /ui/state`` answers: the status page's whole picture, built from plain inputs.

Pure (no Ray, no object store): the registry's records, Serve's instance details, Ray's node list, the status
board's snapshot and the batch jobs go in, one JSON-ready dict comes out (camelCase keys, as the rest of the
API answers). ``status_sources`` reads those inputs; this module only decides what the page shows, so it is
unit-tested in milliseconds.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from modelpool.deployments.app_names import GENERIC_POOL_APP, app_name, graph_app_name
from modelpool.deployments.status_board import WINDOW_S
from modelpool.management import placement
from modelpool.management.batch.jobs import FINAL_STATES, JobRecord
from modelpool.management.registry import GraphRecord, ModelRecord, PoolRecord, version_sort_key
from modelpool.management.serve_state import status_name

NOT_DEPLOYED = "NOT_DEPLOYED"
#: Finished batch jobs shown besides the unfinished ones (newest first).
FINISHED_JOBS_SHOWN = 20
#: Graph apps report their calls to the board as this version (``graph_deployment.GraphModel``).
GRAPH_VERSION = "graph"


def empty_stats(window_s: float = WINDOW_S) -> dict[str, Any]:
    """A version no replica reported in the last minute."""
    return {"requestsPerSecond": 0.0, "p50Ms": None, "p99Ms": None, "errorsPerSecond": 0.0, "windowS": window_s,
            "requests": 0, "errors": 0}


def page_state(now: float, records: list[ModelRecord], defaults: dict[str, Optional[str]],
               pools: list[PoolRecord], graphs: list[GraphRecord], details: dict, nodes: list[dict],
               board: Optional[dict], jobs: list[JobRecord], unavailable: Iterable[str] = ()) -> dict[str, Any]:
    """The page's state; ``board`` None: the status board did not answer (no stats, no errors).

    ``unavailable`` names the inputs that could not be read (shown as empty), so the page can say so.
    """
    apps = details.get("applications", {}) if isinstance(details, dict) else {}
    stats = {(s["model"], s["version"]): s for s in (board or {}).get("stats", [])}
    reports = {r["replicaId"]: r for r in (board or {}).get("replicas", [])}
    pool_of = {(p.name, p.version): p for p in pools}
    return {
        "generatedAt": now,
        "models": models(records, defaults, pool_of, apps, stats, reports),
        "nodes": node_entries(nodes, apps),
        "pools": [pool_entry(p, apps) for p in sorted(pools, key=lambda p: (p.name, version_sort_key(p.version)))],
        "graphs": [graph_entry(g, apps, stats) for g in sorted(graphs, key=lambda g: g.name)],
        "batches": batch_entries(jobs),
        "errors": [error_entry(e) for e in (board or {}).get("errors", [])],
        "statsAvailable": board is not None,
        "unavailable": sorted(set(unavailable)),
    }


# --------------------------------------------------------------------------------------- models
def models(records: list[ModelRecord], defaults: dict[str, Optional[str]], pool_of: dict, apps: dict,
           stats: dict, reports: dict) -> list[dict[str, Any]]:
    by_name: dict[str, list[ModelRecord]] = {}
    for record in records:
        by_name.setdefault(record.name, []).append(record)
    answer = []
    for name in sorted(by_name):
        versions = sorted(by_name[name], key=lambda r: version_sort_key(r.version))
        default = defaults.get(name) or versions[-1].version
        answer.append({"name": name, "defaultVersion": default,
                       "versions": [version_entry(r, r.version == default, pool_of.get((r.name, r.version)), apps,
                                                  stats, reports) for r in versions]})
    return answer


def version_entry(record: ModelRecord, is_default: bool, pool: Optional[PoolRecord], apps: dict, stats: dict,
                  reports: dict) -> dict[str, Any]:
    """One version: where it is served, its bounds, its app's status, its replicas and its last minute.

    A dedicated version (its own app, a pool's too) lists its app's replicas from Serve's details; a version
    the generic pool serves lists the pool's replicas that reported it to the board (those that loaded it).
    """
    dedicated = placement.is_dedicated(record, pool)
    if dedicated:
        _, low, high = placement.replica_bounds(record, pool)
        app = apps.get(app_name(record.name, record.version))
        replicas = [replica_entry(r, reports) for r in app_replicas(app)]
    else:
        low = high = 0
        app = apps.get(GENERIC_POOL_APP)
        reported = {r["replicaId"] for r in reports.values()
                    if (r["model"], r["version"]) == (record.name, record.version)}
        replicas = [replica_entry(r, reports) for r in app_replicas(app) if r.get("replica_id") in reported]
    return {"version": record.version, "isDefault": is_default,
            "pool": "pool" if pool is not None else "dedicated" if dedicated else "generic",
            "minWorkers": low, "maxWorkers": high, "status": app_status(app), "replicas": replicas,
            "stats": version_stats(stats.get((record.name, record.version)))}


def version_stats(entry: Optional[dict]) -> dict[str, Any]:
    if entry is None:
        return empty_stats()
    return {key: entry.get(key) for key in empty_stats()}


def app_status(app: Optional[dict]) -> str:
    return status_name(app.get("status")) if app else NOT_DEPLOYED


def app_replicas(app: Optional[dict]) -> list[dict]:
    if not app:
        return []
    return [r for d in app.get("deployments", {}).values() for r in d.get("replicas", [])]


def replica_entry(replica: dict, reports: dict) -> dict[str, Any]:
    """A replica as Serve's details list it, and when it last reported to the board (unix s; None: never)."""
    replica_id = replica.get("replica_id")
    report = reports.get(replica_id)
    return {"replicaId": replica_id, "nodeId": replica.get("node_id"), "nodeIp": replica.get("node_ip"),
            "state": status_name(replica.get("state")), "lastReport": report["lastReport"] if report else None}


# --------------------------------------------------------------------------------------- cluster
def node_entries(nodes: list[dict], apps: dict) -> list[dict[str, Any]]:
    """Alive nodes, and dead ones Serve still places replicas on; ``replicas``: Serve replicas of any app there."""
    placed: dict[str, int] = {}
    for app in apps.values():
        for replica in app_replicas(app):
            node = replica.get("node_id")
            placed[node] = placed.get(node, 0) + 1
    answer = []
    for node in nodes:
        node_id = node.get("NodeID")
        if not node.get("Alive") and node_id not in placed:
            continue
        answer.append({"nodeId": node_id, "nodeIp": node.get("NodeManagerAddress"), "alive": bool(node.get("Alive")),
                       "isHead": "node:__internal_head__" in (node.get("Resources") or {}),
                       "replicas": placed.get(node_id, 0)})
    return sorted(answer, key=lambda n: (not n["isHead"], n["nodeIp"] or "", n["nodeId"] or ""))


def pool_entry(pool: PoolRecord, apps: dict) -> dict[str, Any]:
    return {"name": pool.name, "version": pool.version, "initialPoolSize": pool.initial_pool_size,
            "maxPoolSize": pool.max_pool_size, "status": app_status(apps.get(app_name(pool.name, pool.version)))}


def graph_entry(graph: GraphRecord, apps: dict, stats: dict) -> dict[str, Any]:
    return {"name": graph.name, "status": app_status(apps.get(graph_app_name(graph.name))),
            "nodes": node_names(graph.graph), "stats": version_stats(stats.get((graph.name, GRAPH_VERSION)))}


def node_names(root: Any) -> list[str]:
    """A graph's node names, depth first from the root (Seldon's ``{"name", "children": [...]}``)."""
    names: list[str] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("name"), str):
            names.append(node["name"])
        stack.extend(reversed(node.get("children") or []))
    return names


# --------------------------------------------------------------------------------------- batches and errors
def batch_entries(jobs: list[JobRecord]) -> list[dict[str, Any]]:
    """Every unfinished job and the newest finished ones, newest first; progress = rows done / rows to do."""
    newest_first = sorted(jobs, key=lambda j: j.created_at or 0, reverse=True)
    ended = [j.execution_id for j in newest_first if j.state in FINAL_STATES]
    finished = set(ended[:FINISHED_JOBS_SHOWN])
    shown = [j for j in newest_first if j.state not in FINAL_STATES or j.execution_id in finished]
    return [batch_entry(j) for j in shown]


def batch_entry(job: JobRecord) -> dict[str, Any]:
    done = job.completed_items + job.failed_items
    total = job.total_items
    progress = min(1.0, done / total) if total else (1.0 if job.state == "Complete" else 0.0)
    return {"executionId": job.execution_id, "model": job.service, "version": job.version,
            "state": job.state.lower(), "rowsTotal": total, "rowsDone": done, "rowsFailed": job.failed_items,
            "progress": round(progress, 4), "createdAt": job.created_at, "updatedAt": job.updated_at}


def error_entry(error: dict) -> dict[str, Any]:
    return {key: error.get(key) for key in ("time", "model", "version", "replicaId", "status", "message", "requestId")}

