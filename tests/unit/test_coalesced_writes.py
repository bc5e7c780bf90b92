"""A replica port's writes within one loop turn leave in one send; close and abort keep their meaning."""
from __future__ import annotations

import asyncio

from modelpool.deployments.coalesced_writes import CoalescedTransport


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("10.0.0.1", 5)}.get(name, default)


async def turn() -> None:
    await asyncio.sleep(0)


def test_writes_of_one_turn_leave_together_and_the_next_turns_apart() -> None:
    asyncio.run(_test_writes_of_one_turn_leave_together_and_the_next_turns_apart())


def test_close_sends_what_is_pending_first_and_abort_drops_it() -> None:
    asyncio.run(_test_close_sends_what_is_pending_first_and_abort_drops_it())


def test_nothing_is_written_to_a_closing_transport_and_the_rest_is_the_real_ones() -> None:
    asyncio.run(_test_nothing_is_written_to_a_closing_transport_and_the_rest_is_the_real_ones())


async def _test_writes_of_one_turn_leave_together_and_the_next_turns_apart() -> None:
    real = Recorder()
    coalesced = CoalescedTransport(real, asyncio.get_running_loop())
    coalesced.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    coalesced.write(b"")
    coalesced.writelines([b"o", b"k"])
    assert real.sent == [] and coalesced.get_write_buffer_size() == 7 + 40
    await turn()
    assert real.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    coalesced.write(b"next")
    await turn()
    assert real.sent[1:] == [b"next"]


async def _test_close_sends_what_is_pending_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    real = Recorder()
    coalesced = CoalescedTransport(real, loop)
    coalesced.write(b"last words")
    coalesced.close()
    assert real.sent == [b"last words"] and real.closed
    await turn()
    assert real.sent == [b"last words"], "nothing sent twice"

    real = Recorder()
    coalesced = CoalescedTransport(real, loop)
    coalesced.write(b"never")
    coalesced.abort()
    await turn()
    assert real.sent == [] and real.aborted


async def _test_nothing_is_written_to_a_closing_transport_and_the_rest_is_the_real_ones() -> None:
    real = Recorder()
    coalesced = CoalescedTransport(real, asyncio.get_running_loop())
    coalesced.write(b"late")
    real.closed = True  # the peer went away within the turn
    await turn()
    assert real.sent == []
    assert coalesced.get_extra_info("peername") == ("10.0.0.1", 5) and coalesced.is_closing()
