"""The competitor of the serving benchmark: plain Ray Serve, tuned by hand for this job.

What a user who knows Ray Serve writes instead of adopting modelpool, in about 30 lines: Serve's
HAProxy ingress and throughput mode (``RAY_SERVE_ENABLE_HA_PROXY``, ``RAY_SERVE_THROUGHPUT_OPTIMIZED``),
``@serve.batch`` with 64 rows / 5 ms, ``max_ongoing_requests=128`` so the batcher can fill, and the
same V2 body and answer as modelpool's. Run as a script it starts its own local Ray and serves the
app at ``/v2/models/iris`` until stdin closes (prints READY), so the benchmark measures it in the
same run as modelpool, on a cluster of its own.

``python -m loadtests.handtuned_serve MODEL_FILE PORT REPLICAS``
"""
from __future__ import annotations

import json
import os
import sys

TUNING = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
os.environ.update(TUNING)  # before Ray is imported: Serve reads them once, at import

import joblib  # noqa: E402
import numpy as np  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402

from loadtests.plain_serve import serve_on_fresh_ray  # noqa: E402


class HandTunedIris:
    """V2 JSON in, one ``predict`` per batch of up to 64 requests, V2 JSON out."""

    def __init__(self, model_path: str) -> None:
        self.model = joblib.load(model_path)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def predict(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        predictions = self.model.predict(np.vstack(batch))
        bounds = np.cumsum([len(rows) for rows in batch])[:-1]
        return np.split(predictions, bounds)

    async def __call__(self, request: Request) -> Response:
        tensor = json.loads(await request.body())["inputs"][0]
        predictions = await self.predict(np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"]))
        answer = {"model_name": "iris", "outputs": [{"name": "predict", "datatype": "INT64",
                                                     "shape": [len(predictions)], "data": predictions.tolist()}]}
        return Response(json.dumps(answer).encode(), media_type="application/json")


def main() -> None:
    """Serve HandTunedIris on a fresh local Ray until stdin closes."""
    model_path, port, replicas = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    deployment = serve.deployment(HandTunedIris).options(
        num_replicas=replicas, max_ongoing_requests=128, ray_actor_options={"num_cpus": os.cpu_count() / replicas / 2})
    serve_on_fresh_ray(deployment.bind(model_path), "iris", "/v2/models/iris", port)


if __name__ == "__main__":
    main()
