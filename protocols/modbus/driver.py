"""Modbus TCP driver: block reads on the absolute-tick scheduler, decoded with numpy.

Read-only by construction: the only requests issued are function codes 1-4 (read coils,
discrete inputs, holding and input registers). One TCP connection carries one request at a
time, so the poll groups of a source share it under a lock; each request is timestamped
at the midpoint of its round trip, the best estimate of when the device sampled.

A Modbus exception or a timeout affects only the block it hit: its tags get bad-quality
samples with the reason, logged once per block until it reads again. A lost connection
ends the session and the supervisor reconnects.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from agent import quality as q
from agent.frame import Frame, concat
from agent.metrics import PollStats
from protocols.modbus.blocks import Block, plan_blocks
from protocols.modbus.config import ModbusSourceConfig
from protocols.sdk import DriverContext, PollGroup, PollingDriver, Tick

_EXCEPTION = q.make(q.BAD, q.Reason.DEVICE_EXCEPTION)
_TIMEOUT = q.make(q.BAD, q.Reason.TIMEOUT)
_GOOD = q.GOOD


class ModbusDriver(PollingDriver):
    config_model = ModbusSourceConfig
    config: ModbusSourceConfig

    def __init__(self, config: ModbusSourceConfig) -> None:
        super().__init__(config)
        self.blocks: dict[str, list[Block]] = {
            group.name: plan_blocks(
                config.tags,
                group.tags.tolist(),
                config.max_gap,
                config.max_registers,
                config.max_bits,
            )
            for group in self.poll_groups()
        }
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._ctx: DriverContext | None = None

    def describe(self) -> str:
        reads = sum(len(blocks) for blocks in self.blocks.values())
        return (
            f", {self.config.url} unit {self.config.unit_id}, "
            f"{reads} block reads in {len(self.blocks)} poll groups"
        )

    async def run(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        await super().run(ctx)

    async def connect(self) -> None:
        client = AsyncModbusTcpClient(
            self.config.host,
            port=self.config.port,
            timeout=self.config.timeout / 1e9,
            retries=0,
            reconnect_delay=0,
        )
        if not await client.connect():
            client.close()
            raise ConnectionError(f"cannot connect to {self.config.url}")
        self._client = client

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, group: PollGroup, tick: Tick, stats: PollStats) -> Frame:
        frames = [await self._read_block(block, stats) for block in self.blocks[group.name]]
        return concat(frames)

    async def _read_block(self, block: Block, stats: PollStats) -> Frame:
        client = self._client
        if client is None or not client.connected:
            raise ConnectionError(f"connection to {self.config.url} lost")
        request = {
            "hr": client.read_holding_registers,
            "ir": client.read_input_registers,
            "coil": client.read_coils,
            "di": client.read_discrete_inputs,
        }[block.table]
        key = f"{block.table}:{block.start}+{block.count}"
        async with self._lock:
            sent = time.time_ns()
            try:
                response = await request(
                    block.start, count=block.count, device_id=self.config.unit_id
                )
            except ConnectionException:
                raise
            except ModbusIOException as exc:
                received = time.time_ns()
                if client.connected:
                    return self._failed(block, key, sent, received, _TIMEOUT, "no response", exc)
                raise ConnectionError(f"connection to {self.config.url} lost: {exc}") from exc
            received = time.time_ns()
        stats.request_done(received - sent)
        if isinstance(response, ExceptionResponse) or response.isError():
            code = getattr(response, "exception_code", None)
            return self._failed(block, key, sent, received, _EXCEPTION, "device exception", code)
        if block.is_bits:
            values, text = block.decode_bits(response.bits), None
        else:
            registers = np.asarray(response.registers, dtype=np.uint16)
            if registers.shape[0] < block.count:
                return self._failed(
                    block,
                    key,
                    sent,
                    received,
                    _EXCEPTION,
                    "short response",
                    f"{registers.shape[0]} of {block.count} registers",
                )
            values, text = block.decoder.decode_registers(registers)
        if self._ctx is not None:
            self._ctx.problems.ok(key)
        n = block.tags.shape[0]
        return Frame(
            block.tags,
            np.full(n, (sent + received) // 2, np.int64),
            values,
            np.full(n, _GOOD, np.uint16),
            received,
            text,
        )

    def _failed(
        self,
        block: Block,
        key: str,
        sent: int,
        received: int,
        quality: int,
        what: str,
        detail: Any,
    ) -> Frame:
        if self._ctx is not None:
            self._ctx.problems.fail(key, f"modbus read failed: {what}", detail=str(detail))
        return Frame.uniform(block.tags, (sent + received) // 2, math.nan, quality, received)

    @classmethod
    def conformance_peer(cls) -> Any:
        return _simulator_peer()


@asynccontextmanager
async def _simulator_peer() -> Any:
    from simulators.modbus_plc import ModbusPLCSimulator

    simulator = ModbusPLCSimulator(seed=1)
    port = await simulator.start("127.0.0.1", 0)
    try:
        yield {"url": f"modbus+tcp://127.0.0.1:{port}"}
    finally:
        await simulator.stop()
