"""A model replica's gRPC port, announced to the gRPC front and withdrawn before it closes.

The port itself (``replica_port``) knows no Ray; this is the glue: open it on the replica's node,
tell the front (``Front.register``) which application it serves, say so again now and then
(a restarted front starts with an empty table and learns the ports back within ``REFRESH_S``),
and on shutdown withdraw it first, so that the front stops sending calls, then drain and close.
The front also probes every port it knows, so a replica killed outright drops out within a second.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Mapping, Optional

from modelpool.deployments.app_names import FRONT_APP, FRONT_DEPLOYMENT
from modelpool.deployments.replica_port import GrpcMethod, ReplicaPort

logger = logging.getLogger("ray.serve")

REFRESH_S = 10.0
DRAIN_S = 20.0
#: the custom autoscaling metric: calls in flight on the port, which Serve's own count misses
IN_FLIGHT_METRIC = "port_in_flight"


class AnnouncedPort:
    """Made in the replica's constructor, on the event loop Serve runs the replica's methods on (the
    port must serve there too: the model's batcher lives on that loop); a no-op without one (unit
    tests). ``open`` may be called from any thread (Serve may run ``reconfigure`` in a pool)."""

    def __init__(self, methods: Mapping[str, GrpcMethod], headers: Mapping[str, str] = (), rest: Any = None,
                 admission: Any = None) -> None:
        self.port = ReplicaPort(methods, headers, rest, admission)
        self._task: Optional[asyncio.Task] = None
        self._registered = False
        self._opened = False
        try:
            self._loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    @property
    def in_flight(self) -> int:
        return self.port.in_flight

    @property
    def opened(self) -> bool:
        return self._opened

    def open(self) -> None:
        if self._opened or self._loop is None:
            return
        self._opened = True
        self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        from ray import serve
        from ray.util import get_node_ip_address

        context = serve.get_replica_context()
        app, replica = context.app_name, context.replica_id.unique_id
        if self.port.rest is not None:
            self.port.rest.app_name = app  # its log lines name the app, as Serve's do
        try:
            address = await self.port.start(get_node_ip_address())
        except Exception:  # noqa: BLE001 - gRPC still reaches the replica through Serve's ingress
            logger.exception("the replica's gRPC port did not start; gRPC calls take Serve's path")
            return
        logger.info("gRPC port of %s on %s", app, address)
        front = serve.get_deployment_handle(FRONT_DEPLOYMENT, app_name=FRONT_APP)
        while True:
            try:
                await front.register.remote(app, replica, address)
                self._registered = True
            except Exception as exc:  # noqa: BLE001 - the front is restarting: try again later
                logger.debug("registering the gRPC port with the front failed: %s", exc)
            await asyncio.sleep(REFRESH_S)

    async def close(self) -> None:
        """Withdraw from the front (it answers once no new call can be routed here), drain, close."""
        if not self._opened:
            return
        self._opened = False
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._registered:
            from ray import serve

            context = serve.get_replica_context()
            front = serve.get_deployment_handle(FRONT_DEPLOYMENT, app_name=FRONT_APP)
            try:
                await asyncio.wait_for(front.unregister.remote(context.app_name, context.replica_id.unique_id), 5)
            except Exception as exc:  # noqa: BLE001 - the front will find the port closed by itself
                logger.warning("withdrawing the gRPC port from the front failed: %s", exc)
        await self.port.stop(DRAIN_S)
