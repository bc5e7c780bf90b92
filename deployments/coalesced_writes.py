"""One ``send`` per connection per event-loop turn on a replica's port, however many writes the protocol makes.

Why: uvicorn's HTTP/1.1 protocol writes an answer's head and its body in two ``transport.write`` calls,
and its HTTP/2 protocol a gRPC answer's headers, message and trailers in three. uvloop sends each at
once, so every answer costs two or three ``send`` system calls here and as many packets (TCP_NODELAY is
on) that the front must read one by one. The write path was the largest single cost in the replica
port's profile at c=64 (``send`` 15% of the replica's CPU, BENCHMARKS.md, issue 15).

The protocol class here hands each connection a transport that collects the writes made during one
turn of the event loop and sends them together at the start of the next turn (``call_soon``), as
Netty's FlushConsolidationHandler does. An answer leaves a few microseconds later, in one piece.
Everything else is the real transport's: flow control (``pause_writing`` reaches the protocol from the
real transport, counting what was sent), ``close`` (which sends what is pending first), extra info.
"""
from __future__ import annotations

import asyncio
from typing import Any, Optional

from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol


class CoalescedTransport:
    """A transport whose writes in one loop turn leave in one ``write`` of the transport it wraps."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: Optional[list[bytes]] = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._send)
        else:
            self._pending.append(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _send(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending or ()))

    def close(self) -> None:
        self._send()
        self._transport.close()

    def write_eof(self) -> None:
        self._send()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else: the real transport's
        return getattr(self._transport, name)


class CoalescingProtocol(AutoZttpProtocol):
    """uvicorn's HTTP/1.1-or-HTTP/2 protocol (``http2=True``) over a :class:`CoalescedTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescedTransport(transport, self.loop))  # type: ignore[arg-type]
