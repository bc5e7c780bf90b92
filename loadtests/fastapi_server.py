"""A baseline of the serving benchmark: FastAPI on uvicorn predicting in process, one request at a time.

What a user writes without any serving framework: one route, the V2 body decoded with FastAPI's own
request object, ``predict`` on the event loop, no batching, no Ray. Its throughput at c=64 is the
bar modelpool's batching must clear by 1.5x (issue 15).

``python -m loadtests.fastapi_server MODEL_FILE PORT`` serves until stdin closes (prints READY).
"""
from __future__ import annotations

import sys

import joblib
import numpy as np
from fastapi import FastAPI, Request

from loadtests.lean_server import serve_until_stdin_closes


def make_app(model) -> FastAPI:
    app = FastAPI()

    @app.post("/v2/models/iris/infer")
    async def infer(request: Request) -> dict:
        tensor = (await request.json())["inputs"][0]
        predictions = model.predict(np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"]))
        return {"model_name": "iris", "outputs": [{"name": "predict", "datatype": "INT64",
                                                   "shape": [len(predictions)], "data": predictions.tolist()}]}

    return app


if __name__ == "__main__":
    serve_until_stdin_closes(make_app(joblib.load(sys.argv[1])), int(sys.argv[2]), lifespan="on")
