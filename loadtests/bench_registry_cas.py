"""What a compare-and-set registry write adds to today's plain write, in process (no Ray), on a local store.

    python -m loadtests.bench_registry_cas [--writes 2000] [--rounds 5] [--s3]

Four ways to change one model record, each ``--writes`` times, interleaved over ``--rounds`` so drift hits all:

* ``plain``: ``Registry.put_model`` (one whole-object write; what management did before: last writer wins)
* ``cas``: ``RegistryWriter.replace`` (read the stored record, compare the revision, write): the actor's work
* ``cas+client``: the same through ``WriterClient.local`` (its lock and Outcome handling)
* ``cas+actor-fake``: through the unit tests' in-process actor (a call handed to the actor's thread and back:
  the shape of an actor call without Ray's transport; a real actor call adds Ray's, not measured here)

``--s3`` runs the same against a local moto S3 server (tests/s3server.py): reads and writes are HTTP round trips.
Prints the median per-write time of each, and the ratio to plain.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from typing import Callable

from modelpool.cluster.object_store import ObjectStore
from modelpool.management.registry import ModelRecord, Registry
from modelpool.management.registry_writer import RegistryWriter, WriterClient


def record(batch_size: int) -> ModelRecord:
    return ModelRecord(name="iris", version="1", url="iris-1.zip", source="store://models/iris/1/x.zip", digest="ab",
                       handler="handler.py", runtime="python", batch_size=batch_size, max_batch_delay_ms=5,
                       initial_workers=0, min_workers=0, max_workers=0, response_timeout_s=120,
                       manifest={"name": "iris", "version": "1", "handler": "handler.py"})


def timed(writes: int, write: Callable[[int], None]) -> float:
    started = time.perf_counter()
    for i in range(writes):
        write(i)
    return (time.perf_counter() - started) / writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--s3", action="store_true")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        if args.s3:
            import os

            from tests.s3server import running_s3_server

            server = stack.enter_context(running_s3_server())
            os.environ.update(server.env)  # pyarrow reads the credentials from the environment
            store = ObjectStore(f"s3://{server.bucket}/bench", s3_endpoint=server.endpoint)
        else:
            store = ObjectStore(stack.enter_context(tempfile.TemporaryDirectory()))
        registry = Registry(store)
        writer = RegistryWriter(store=store)
        client = WriterClient.local(registry)
        fake = _actor_fake_client(store)
        registry.put_model(record(1))

        def plain(i: int) -> None:
            registry.put_model(record(i + 1))

        def cas_with(call: Callable[..., object]) -> Callable[[int], None]:
            revision = [registry.get_model("iris", "1").revision]

            def write(i: int) -> None:
                outcome = call("models", "iris", "1", revision[0], record(i + 1).model_dump(mode="json"))
                assert outcome.ok, outcome
                revision[0] = outcome.revision
            return write

        results: dict[str, list[float]] = {"plain": [], "cas": [], "cas+client": [], "cas+actor-fake": []}
        for _ in range(args.rounds):
            results["plain"].append(timed(args.writes, plain))
            results["cas"].append(timed(args.writes, cas_with(writer.replace)))
            results["cas+client"].append(timed(args.writes, cas_with(client.replace)))
            if fake is not None:
                results["cas+actor-fake"].append(timed(args.writes, cas_with(fake.replace)))
    base = statistics.median(results["plain"])
    print(f"{'store':<8}{'write':<16}{'median us/write':>16}{'x plain':>10}   rounds (us)")
    for name, values in results.items():
        if values:
            median = statistics.median(values)
            print(f"{'s3' if args.s3 else 'local':<8}{name:<16}{median * 1e6:>16.1f}{median / base:>10.2f}   "
                  + " ".join(f"{v * 1e6:.0f}" for v in values))


def _actor_fake_client(store: ObjectStore):
    """A WriterClient over the unit tests' in-process actor (None when the tests are not importable)."""
    try:
        from modelpool.management import registry_writer
        from tests.unit.in_process_actors import ActorClass, InProcessActors
    except ImportError:
        return None
    actors = InProcessActors()
    handle = ActorClass(actors, registry_writer.RegistryWriterActor).remote(None, "registry", store)

    def call(method: str, args: tuple, kwargs: dict):
        return actors.get(getattr(handle, method).remote(*args, **kwargs))
    return WriterClient(call)


if __name__ == "__main__":
    main()
