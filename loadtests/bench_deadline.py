"""What enforcing response_timeout costs a replica call: the answer path with and without the deadline.

In process, no cluster: a real iris model (scikit-learn, trained from the dataset it ships) loaded
as replicas load it, answering V2 requests one at a time, as a lone client makes them. The
baseline calls the answer path without the deadline (``model_calls._answer``, what replicas ran
before), the other the one replicas run now (``answer_model_call``: the response_timeout deadline
around it, plus the metrics both record). Rounds alternate so machine noise hits both alike; the figure
is the ratio of medians; the deadline alone is timed around a coroutine that does nothing, since
its few microseconds are below the noise of a whole call.

Usage: ``python -m loadtests.bench_deadline [--calls 5000] [--rounds 7]``
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from modelpool.deployments import deadlines, model_calls
from modelpool.deployments.archive import unpack_archive
from modelpool.deployments.examples import build_examples
from modelpool.deployments.loaded_model import LoadedModel

BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                               "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
CALL = model_calls.ModelCall(None, "infer")


async def _read() -> bytes:
    return BODY


async def with_deadline(model: LoadedModel, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        response = await model_calls.answer_model_call(model, CALL, _read, ["1"], {}, {})
    assert response.status_code == 200, response.body
    return (time.perf_counter() - started) / calls


async def without_deadline(model: LoadedModel, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        response = await model_calls._answer(model, CALL, _read, ["1"], {}, {})
        model.metrics.request(CALL.action, response.status_code, 0.0)  # the same bookkeeping as the real path
    assert response.status_code == 200, response.body
    return (time.perf_counter() - started) / calls


async def _noop() -> None:
    return None


async def bare_deadline_cost(calls: int) -> tuple[float, float, float]:
    """A deadline alone, around a coroutine that does nothing: seconds per call without one, with
    modelpool's swept deadline (``deadlines.within``), and with ``asyncio.timeout`` (a timer each)."""
    started = time.perf_counter()
    for _ in range(calls):
        await _noop()
    plain = (time.perf_counter() - started) / calls
    started = time.perf_counter()
    for _ in range(calls):
        await deadlines.within(120, _noop())
    swept = (time.perf_counter() - started) / calls
    started = time.perf_counter()
    for _ in range(calls):
        async with asyncio.timeout(120):
            await _noop()
    return plain, swept, (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "store"
        build_examples(store)
        model = LoadedModel(unpack_archive(store / "iris-1.zip", Path(scratch) / "cache"), "iris", "1")
        try:
            asyncio.run(with_deadline(model, 200))   # warm: the first calls pick inline or thread
            base, timed = [], []
            for _ in range(args.rounds):
                base.append(asyncio.run(without_deadline(model, args.calls)))
                timed.append(asyncio.run(with_deadline(model, args.calls)))
        finally:
            model.close()
    bare = [asyncio.run(bare_deadline_cost(100_000)) for _ in range(args.rounds)]
    b, t = statistics.median(base) * 1e6, statistics.median(timed) * 1e6
    plain = statistics.median(r[0] for r in bare)
    swept, timer = ((statistics.median(r[i] for r in bare) - plain) * 1e6 for i in (1, 2))
    print(f"replica answer path, {args.calls} V2 calls x {args.rounds} rounds (median per call):")
    print(f"  without deadline (baseline): {b:7.1f} us")
    print(f"  with response_timeout:       {t:7.1f} us   ratio {t / b:.3f} (+{t - b:.1f} us)")
    print(f"  a deadline alone, around a no-op (100,000 calls): swept (deadlines.within) {swept:.1f} us, "
          f"asyncio.timeout {timer:.1f} us")


if __name__ == "__main__":
    main()
