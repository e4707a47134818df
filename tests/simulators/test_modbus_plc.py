"""The Modbus PLC simulator's fault injection, seen from a raw socket."""

from __future__ import annotations

import asyncio
import struct

from simulators.modbus_plc import ModbusPLCSimulator


def _read_request(tid: int, start: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, start, count)


async def _replies(reader: asyncio.StreamReader, seconds: float) -> list[tuple[int, int]]:
    """(transaction id, byte count) of every reply that arrives within ``seconds``."""
    replies = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            tid, _, length, _ = struct.unpack(
                ">HHHB", await asyncio.wait_for(reader.readexactly(7), left)
            )
        except TimeoutError:
            break
        pdu = await reader.readexactly(length - 1)
        replies.append((tid, pdu[1]))
    return replies


async def test_a_late_reply_never_comes_back_under_the_next_requests_id() -> None:
    """Every request is delayed 0.3 s. The client gives up on the first (4 registers)
    after 0.1 s and asks for 2 others: the reply under the second id must be those 2
    registers. pymodbus's server, left alone, sends the first request's 8 bytes under it."""
    simulator = ModbusPLCSimulator(seed=1, timeout_rate=1.0, timeout_s=0.3)
    port = await simulator.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_read_request(1, 0, 4))
        await asyncio.sleep(0.1)
        writer.write(_read_request(2, 4, 2))
        replies = await _replies(reader, 1.0)
    finally:
        writer.close()
        await simulator.stop()
    assert replies == [(2, 4)], "the second request's 2 registers, and nothing under a wrong id"
