"""Baselines for the serving benchmark: the same iris model behind plain Ray Serve handlers.

``PlainIris`` is what a Ray Serve user writes first: decode the V2 JSON, call predict, encode the
answer, one request at a time, no batching. Run as a script it starts its own local Ray with
Serve's default Python proxy (no HAProxy) and serves until stdin closes, so the benchmark can
measure it in the same run as modelpool. Imported, the class is also deployed inside a modelpool
cluster as the "unbatched handler on the same stack" baseline.
"""
from __future__ import annotations

import json
import os
import sys

import joblib
import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response


class PlainIris:
    """Unbatched V2 handler: one predict call per request, on the replica's event loop."""

    def __init__(self, model_path: str) -> None:
        self.model = joblib.load(model_path)

    async def __call__(self, request: Request) -> Response:
        body = json.loads(await request.body())
        tensor = body["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        predictions = self.model.predict(rows)
        answer = {"model_name": "iris", "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [len(predictions)], "data": predictions.tolist()}]}
        return Response(json.dumps(answer).encode(), media_type="application/json")


def serve_on_fresh_ray(deployment, name: str, route_prefix: str, port: int) -> None:
    """Start a local Ray and Serve on ``port``, run ``deployment`` and serve until stdin closes (prints READY).

    Serve reads its RAY_SERVE_* environment when Ray is imported: callers set it before that.
    """
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(deployment, name=name, route_prefix=route_prefix)
    print("READY", flush=True)
    sys.stdin.read()
    serve.shutdown()
    ray.shutdown()


def main() -> None:
    """Serve PlainIris on a fresh local Ray with Serve's defaults until stdin closes."""
    model_path, port, max_ongoing = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    for key in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED"):
        os.environ.pop(key, None)
    options = {} if max_ongoing == "default" else {"max_ongoing_requests": int(max_ongoing)}
    serve_on_fresh_ray(serve.deployment(PlainIris).options(**options).bind(model_path), "plain", "/", port)


if __name__ == "__main__":
    main()
