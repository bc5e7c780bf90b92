"""The ceiling of the serving benchmark: one lean Python process serving the iris model over V2 JSON.

No Ray, no framework: a raw ASGI app on uvicorn with httptools, the same V2 request body and the
same answer as modelpool's, and micro-batching without a timer: a request's rows join a pending list,
and a batch is predicted as soon as the event loop has read everything that had arrived (one
``call_soon``), so under load a batch holds whatever came in while the previous one ran and a lone
request waits for nothing. It checks nothing a real server must (tokens, limits, deadlines, shapes
beyond what numpy needs), so it is a ceiling, not a competitor: it shows how much of a request's cost
is framework rather than model.

``python -m loadtests.lean_server MODEL_FILE PORT`` serves until stdin closes (prints READY).
"""
from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any, Callable

import joblib
import numpy as np
import uvicorn

HEADERS = [(b"content-type", b"application/json")]


class MicroBatcher:
    """Predicts everything pending in one call, once the loop has read what arrived."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray]) -> None:
        self.predict = predict
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []

    def submit(self, rows: np.ndarray) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if not self.pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self.pending.append((rows, future))
        return future

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        predictions = self.predict(np.vstack([rows for rows, _ in batch]))
        start = 0
        for rows, future in batch:
            future.set_result(predictions[start:start + len(rows)])
            start += len(rows)


def make_app(model: Any) -> Callable:
    batcher = MicroBatcher(model.predict)

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        tensor = json.loads(body)["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        predictions = await batcher.submit(rows)
        answer = json.dumps({"model_name": "iris", "outputs": [{"name": "predict", "datatype": "INT64",
                             "shape": [len(predictions)], "data": predictions.tolist()}]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*HEADERS, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


def serve_until_stdin_closes(app: Callable, port: int, lifespan: str = "off") -> None:
    """Run `app` on uvicorn (httptools; uvicorn's "auto" loop is uvloop when installed), print READY once listening."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", loop="auto", log_level="warning",
                            access_log=False, lifespan=lifespan)
    server = uvicorn.Server(config)
    threading.Thread(target=_stop_when_stdin_closes, args=(server,), daemon=True).start()
    _announce_when_started(server)
    server.run()


def main() -> None:
    serve_until_stdin_closes(make_app(joblib.load(sys.argv[1])), int(sys.argv[2]))


def _announce_when_started(server: uvicorn.Server) -> None:
    def watch() -> None:
        while not server.started:
            threading.Event().wait(0.05)
        print("READY", flush=True)

    threading.Thread(target=watch, daemon=True).start()


def _stop_when_stdin_closes(server: uvicorn.Server) -> None:
    sys.stdin.read()
    server.should_exit = True


if __name__ == "__main__":
    main()
