"""A server for comparing batchers: modelpool's LoadedModel (its V2 codec, batcher and handler) on a raw ASGI app.

No Ray and no Serve, so what changes between two of these servers is the batcher alone:
``--batcher-file`` loads ``AdaptiveBatcher`` from another copy of ``deployments/batcher.py`` (e.g. the
committed one, ``git show HEAD:deployments/batcher.py``) in place of the installed one. ``--overhead-us``
spends that much CPU on the event loop per request before decoding, standing in for the HTTP and
Serve work a replica's loop does per request (about 0.6 ms measured in a replica), which decides how
many requests arrive while a batch forms. ``GET /stats`` answers the batcher's counts as JSON.

``python -m loadtests.batcher_server ARCHIVE PORT [--batcher-file FILE] [--overhead-us N]`` serves
``/v2/models/iris/infer`` until stdin closes (prints READY).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from loadtests.lean_server import serve_until_stdin_closes
from modelpool.deployments.archive import unpack_archive
from modelpool.deployments.codecs import REST_CODECS
from modelpool.deployments.loaded_model import LoadedModel

HEADERS = [(b"content-type", b"application/json")]


def load_batcher_class(path: Path) -> type:
    spec = importlib.util.spec_from_file_location("compared_batcher", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.AdaptiveBatcher


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def make_app(model: LoadedModel, overhead_s: float) -> Callable:
    codec = REST_CODECS["infer"]

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/stats":
            stats = model.batcher.stats
            counts = {"batches": stats.batches, "items": stats.items, "sizes": stats.sizes,
                      "waited_s": getattr(stats, "waited_s", None)}  # None: a batcher from before waits were counted
            await _send(send, json.dumps(counts).encode(), {})
            return
        busy(overhead_s)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}

        async def read() -> bytes:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    return body

        async def decode():
            return codec.decode(await read(), headers)

        encoded = codec.encode(await model.infer(decode))
        await _send(send, encoded.payload, encoded.headers)

    return app


async def _send(send: Callable, payload: bytes, headers: dict) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [*HEADERS, (b"content-length", str(len(payload)).encode()),
                            *((k.encode(), v.encode()) for k, v in headers.items() if k.lower() != "content-type")]})
    await send({"type": "http.response.body", "body": payload})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("archive", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--batcher-file", type=Path)
    parser.add_argument("--overhead-us", type=float, default=0.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelpool-batcher-server-") as cache:
        archive = unpack_archive(args.archive, Path(cache))
        model = LoadedModel(archive, archive.manifest.name, archive.manifest.version)
        if args.batcher_file is not None:
            batcher = model.batcher
            model.batcher = load_batcher_class(args.batcher_file)(model._predict_batch, batcher.max_batch_size,
                                                                   batcher.max_delay_s)
            if not hasattr(model.batcher.stats, "last_wait_s"):  # a batcher from before the wait was measured
                model.batcher.stats.last_wait_s = 0.0
        serve_until_stdin_closes(make_app(model, args.overhead_us / 1e6), args.port)
        model.close()


if __name__ == "__main__":
    main()
