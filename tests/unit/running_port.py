"""A replica's gRPC port on an event loop of its own, with stand-in methods: for the port's and the front's tests."""
from __future__ import annotations

import asyncio
import threading

import grpc

from modelpool.deployments.replica_port import CallContext, GrpcMethod, ReplicaPort
from modelpool.deployments.protos import open_inference_pb2 as pb

SLOW_S = 0.5


async def infer(request: pb.ModelInferRequest, context: CallContext) -> pb.ModelInferResponse:
    """Echo the name; ``fail`` sets a status with a message; ``slow`` takes a while; ``crash`` raises."""
    metadata = dict(context.invocation_metadata())
    if request.model_name == "fail":
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("unknown model 'fail' — naïve 100% wrong")
        return pb.ModelInferResponse()
    if request.model_name == "slow":
        await asyncio.sleep(SLOW_S)
    if request.model_name == "crash":
        raise RuntimeError("a bug in the replica")
    return pb.ModelInferResponse(model_name=request.model_name, id=metadata.get("authorization", ""))


async def ready(request: pb.ModelReadyRequest, context: CallContext) -> pb.ModelReadyResponse:
    return pb.ModelReadyResponse(ready=request.name == "iris")


class RunningPort:
    """A ReplicaPort on its own event loop thread; ``ModelInfer`` answers with ``served_by`` as its id."""

    def __init__(self, served_by: str = "") -> None:
        self.served_by = served_by
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = ReplicaPort({"ModelInfer": GrpcMethod(pb.ModelInferRequest, self.infer),
                              "ModelReady": GrpcMethod(pb.ModelReadyRequest, ready)},
                             {"x-modelpool-replica": served_by or "replica-1"})
        self.address = self.run(self.port.start("127.0.0.1"))

    async def infer(self, request: pb.ModelInferRequest, context: CallContext) -> pb.ModelInferResponse:
        reply = await infer(request, context)
        if self.served_by:
            reply.id = self.served_by
        return reply

    def run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.port.stop(5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
