"""Replies that are not the answer to the request: a misbehaving device on a real socket.

pymodbus pairs a reply with its request by transaction id alone. A device, or a gateway
that gave up on a slow device, can answer under the right id with another request's
values. The driver must flag those blocks, never store the values as the tags' data.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import structlog

from agent.acquisition import quality as q
from tests.conftest import agent_toml, read_store, run_agent

HONEST, TOO_LONG, WRONG_FUNCTION, TRUNCATED = 20, 0, 10, 30  # holding register each tag reads


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read holding registers, each register holding its address + 1000, except that a
    read at TOO_LONG gets three registers more than asked and a read at WRONG_FUNCTION
    gets an input-register reply (function code 4); a read of coils gets a byte more. A
    read at TRUNCATED gets a reply whose byte count claims two bytes it does not carry."""
    try:
        while True:
            tid, _, _, unit = struct.unpack(">HHHB", await reader.readexactly(7))
            function, start, count = struct.unpack(">BHH", await reader.readexactly(5))
            if start == TOO_LONG:
                count += 3
            if start == WRONG_FUNCTION:
                function = 4
            if function == 1:
                values = b"\xff" * ((count + 7) // 8 + 1)
            else:
                values = struct.pack(f">{count}H", *range(1000 + start, 1000 + start + count))
            claimed = len(values) + 2 if start == TRUNCATED else len(values)
            pdu = struct.pack(">BB", function, claimed) + values
            writer.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def misbehaving_device() -> AsyncIterator[int]:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


async def test_a_reply_of_another_length_or_function_is_flagged_not_stored_as_data(
    tmp_path: Path, misbehaving_device: int
) -> None:
    tags = "".join(
        f'\n[[sources.tags]]\nname = "{name}"\naddress = "{address}"\nrate = "100ms"\n'
        for name, address in (
            ("honest", f"hr:{HONEST}"),
            ("too_long", f"hr:{TOO_LONG}"),
            ("wrong_function", f"hr:{WRONG_FUNCTION}"),
            ("coils_too_long", "coil:0"),
            ("truncated", f"hr:{TRUNCATED}"),
        )
    )
    source = (
        f'[[sources]]\nname = "plc"\nprotocol = "modbus"\n'
        f'url = "modbus+tcp://127.0.0.1:{misbehaving_device}"\nmax_gap = 0\n{tags}'
    )
    with structlog.testing.capture_logs() as logs:
        await run_agent(agent_toml(tmp_path / "store", source), 2.0)

    table = read_store(tmp_path / "store")
    names = table["tag"].cast("string").to_numpy(zero_copy_only=False)
    quality = table["quality"].to_numpy()
    value = table["value"].to_numpy()
    honest = names == "honest"
    assert honest.sum() >= 5
    assert (quality[honest] == q.GOOD).all()
    assert (value[honest] == 1000 + HONEST).all()
    for name in ("too_long", "wrong_function", "coils_too_long", "truncated"):
        rows = names == name
        assert rows.sum() >= 5, name
        assert (quality[rows] == q.make(q.BAD, q.Reason.DECODE_ERROR)).all(), name
        assert np.isnan(value[rows]).all(), name
    warnings = [
        e for e in logs if e["event"] == "modbus read failed: reply does not fit the request"
    ]
    assert sorted(e["detail"] for e in warnings) == [
        "16 bits for a read of 8",
        "4 registers for a read of 1",
        "byte count 4 for 2 bytes",
        "function code 4 for a read with 3",
    ], "each block's problem is logged once, with what did not fit"
    # a reply pymodbus alone would refuse by dropping the connection: the session held
    assert not [e for e in logs if e["event"] == "source failed"]
