"""Modbus TCP driver: block reads on the absolute-tick scheduler, decoded with numpy.

Read-only by construction: the only requests issued are function codes 1-4 (read coils,
discrete inputs, holding and input registers). One TCP connection carries one request at a
time, so the poll groups of a source share it under a lock; each request is timestamped
at the midpoint of its round trip, the best estimate of when the device sampled. A poll
becomes one frame whose slices the blocks fill in place, so the hot path allocates a few
arrays per poll rather than a frame per block. pymodbus hands replies over as numpy arrays
(``protocols.modbus.replies``), not as a Python int per register.

A Modbus exception, a timeout or a reply that does not fit the request (another function
code or length: a late reply to another request) affects only the block it hit: its tags
get bad-quality samples with the reason, logged once per block until it reads again. A
lost connection ends the session and the supervisor reconnects.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.ops.metrics import PollStats
from protocols.modbus.blocks import Block, plan_blocks
from protocols.modbus.config import ModbusSourceConfig
from protocols.modbus.replies import use_numpy_replies
from protocols.sdk import DriverContext, PollGroup, PollingDriver, Tick

_EXCEPTION = q.make(q.BAD, q.Reason.DEVICE_EXCEPTION)
_TIMEOUT = q.make(q.BAD, q.Reason.TIMEOUT)
_MISMATCH = q.make(q.BAD, q.Reason.DECODE_ERROR)
_GOOD = q.GOOD
_REQUESTS = {
    "hr": "read_holding_registers",
    "ir": "read_input_registers",
    "coil": "read_coils",
    "di": "read_discrete_inputs",
}
_FUNCTION_CODES = {"coil": 1, "di": 2, "hr": 3, "ir": 4}


@dataclass(frozen=True)
class _GroupPlan:
    """A poll group's block reads and where each one's tags sit in the poll's frame."""

    blocks: list[Block]
    tags: np.ndarray  # read-only: every frame of the group shares it
    slices: list[slice]
    keys: list[str]  # problem-log key per block

    @classmethod
    def of(cls, blocks: list[Block]) -> _GroupPlan:
        tags = np.concatenate([block.tags for block in blocks])
        tags.flags.writeable = False
        bounds = np.cumsum([0] + [block.tags.shape[0] for block in blocks]).tolist()
        return cls(
            blocks,
            tags,
            [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)],
            [f"{block.table}:{block.start}+{block.count}" for block in blocks],
        )


class ModbusDriver(PollingDriver):
    config_model = ModbusSourceConfig
    config: ModbusSourceConfig

    def __init__(self, config: ModbusSourceConfig) -> None:
        super().__init__(config)
        self.plans: dict[str, _GroupPlan] = {
            group.name: _GroupPlan.of(
                plan_blocks(
                    config.tags,
                    group.tags.tolist(),
                    config.max_gap,
                    config.max_registers,
                    config.max_bits,
                )
            )
            for group in self.poll_groups()
        }
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock = asyncio.Lock()
        self._ctx: DriverContext | None = None

    def describe(self) -> str:
        reads = sum(len(plan.blocks) for plan in self.plans.values())
        return (
            f", {self.config.url} unit {self.config.unit_id}, "
            f"{reads} block reads in {len(self.plans)} poll groups"
        )

    def probe_address(self) -> tuple[str, int] | None:
        return None if self.config.is_serial else (self.config.host, self.config.port)

    async def run(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        await super().run(ctx)

    async def connect(self) -> None:
        client = self._serial_client() if self.config.is_serial else self._tcp_client()
        use_numpy_replies(client)
        if not await client.connect():
            client.close()
            raise ConnectionError(f"cannot connect to {self.config.url}")
        self._client = client

    def _tcp_client(self) -> AsyncModbusTcpClient:
        return AsyncModbusTcpClient(
            self.config.host,
            port=self.config.port,
            timeout=self.config.timeout / 1e9,
            retries=0,
            reconnect_delay=0,
        )

    def _serial_client(self) -> AsyncModbusSerialClient:
        """RTU framing on a serial line: the same requests, decoding and errors as TCP."""
        if importlib.util.find_spec("serial") is None:
            raise RuntimeError("modbus+rtu needs pyserial: pip install 'edge-agent[serial]'")
        config = self.config
        return AsyncModbusSerialClient(
            config.serial_port,
            framer=FramerType.RTU,
            baudrate=config.baudrate,
            bytesize=config.bytesize,
            parity=config.parity,
            stopbits=config.stopbits,
            timeout=config.timeout / 1e9,
            retries=0,
            reconnect_delay=0,
        )

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, group: PollGroup, tick: Tick, stats: PollStats) -> Frame:
        """Every block of the group into one frame, each block filling its own slice.

        The lock is held for the whole poll: groups sharing the connection take turns per
        poll, and a poll's blocks go out back to back.
        """
        plan = self.plans[group.name]
        n = plan.tags.shape[0]
        frame = Frame(
            plan.tags, np.empty(n, np.int64), np.empty(n, np.float64), np.empty(n, np.uint16)
        )
        async with self._lock:
            for block, rows, key in zip(plan.blocks, plan.slices, plan.keys, strict=True):
                await self._read_block(block, frame, rows, key, stats)
        return frame

    async def _read_block(
        self, block: Block, frame: Frame, rows: slice, key: str, stats: PollStats
    ) -> None:
        client = self._client
        if client is None or not client.connected:
            raise ConnectionError(f"connection to {self.config.url} lost")
        request = getattr(client, _REQUESTS[block.table])
        sent = time.time_ns()
        try:
            response = await request(block.start, count=block.count, device_id=self.config.unit_id)
        except ConnectionException:
            raise
        except ModbusIOException as exc:
            if not client.connected:
                raise ConnectionError(f"connection to {self.config.url} lost: {exc}") from exc
            self._failed(frame, rows, key, sent, _TIMEOUT, "no response", exc)
            return
        received = time.time_ns()
        frame.received = received
        stats.request_done(received - sent)
        frame.time[rows] = (sent + received) // 2
        if isinstance(response, ExceptionResponse) or response.isError():
            code = exception_name(getattr(response, "exception_code", None))
            self._failed(frame, rows, key, sent, _EXCEPTION, "device exception", code)
            return
        mismatch = _mismatch(block, response)
        if mismatch is not None:
            self._failed(
                frame, rows, key, sent, _MISMATCH, "reply does not fit the request", mismatch
            )
            return
        if block.is_bits:
            frame.value[rows] = block.decode_bits(response.bits)
        else:
            _, text = block.decoder.decode_registers(response.registers, out=frame.value[rows])
            if text is not None:
                if frame.text is None:
                    frame.text = np.full(len(frame), None, dtype=object)
                frame.text[rows] = text
        frame.quality[rows] = _GOOD
        if self._ctx is not None:
            self._ctx.problems.ok(key)

    def _failed(
        self, frame: Frame, rows: slice, key: str, sent: int, quality: int, what: str, detail: Any
    ) -> None:
        """Bad samples for the block's tags, stamped at the request's midpoint."""
        received = time.time_ns()
        frame.received = received
        frame.time[rows] = (sent + received) // 2
        frame.value[rows] = math.nan
        frame.quality[rows] = quality
        if self._ctx is not None:
            self._ctx.problems.fail(key, f"modbus read failed: {what}", detail=str(detail))

    @classmethod
    def conformance_peer(cls) -> Any:
        return _simulator_peer()


# the Modbus application protocol's names (V1.1b3, section 7), as a PLC manual spells them
_EXCEPTION_NAMES: dict[int, str] = {
    ExcCodes.ILLEGAL_FUNCTION: "ILLEGAL FUNCTION",
    ExcCodes.ILLEGAL_ADDRESS: "ILLEGAL DATA ADDRESS",
    ExcCodes.ILLEGAL_VALUE: "ILLEGAL DATA VALUE",
    ExcCodes.DEVICE_FAILURE: "SERVER DEVICE FAILURE",
    ExcCodes.ACKNOWLEDGE: "ACKNOWLEDGE",
    ExcCodes.DEVICE_BUSY: "SERVER DEVICE BUSY",
    ExcCodes.NEGATIVE_ACKNOWLEDGE: "NEGATIVE ACKNOWLEDGE",
    ExcCodes.MEMORY_PARITY_ERROR: "MEMORY PARITY ERROR",
    ExcCodes.GATEWAY_PATH_UNAVIABLE: "GATEWAY PATH UNAVAILABLE",
    ExcCodes.GATEWAY_NO_RESPONSE: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}


def exception_name(code: int | None) -> str:
    """``"SERVER DEVICE FAILURE (4)"``: what a Modbus exception code means, and the code."""
    if code is None:
        return "an error reply without an exception code"
    return f"{_EXCEPTION_NAMES.get(code, 'unknown exception')} ({code})"


def _mismatch(block: Block, response: Any) -> str | None:
    """What makes a reply not the answer to this block's request, if anything.

    pymodbus pairs a reply with its request by transaction id on TCP and by nothing at all
    on RTU, whose frames carry no id: after a timeout, the late reply to the previous
    request is returned as this one's (pymodbus-dev/pymodbus#2636, #1509). A gateway, or
    pymodbus's own server, can also label a late reply with the next request's id. A reply
    of another function code or length is such a reply, never data for these tags; one of
    the same length cannot be told apart, which is why timeouts should exceed the
    device's worst response time. A reply whose byte count contradicts its own length
    is no data either.
    """
    function = _FUNCTION_CODES[block.table]
    problem = getattr(response, "problem", None)  # set by protocols.modbus.replies
    if problem is not None:  # the reply contradicts itself: its byte count, its length
        return str(problem)
    if response.function_code != function:
        return f"function code {response.function_code} for a read with {function}"
    if block.is_bits:
        got, want = len(response.bits), (block.count + 7) // 8 * 8  # bits come in whole bytes
        unit = "bits"
    else:
        got, want, unit = len(response.registers), block.count, "registers"
    if got != want:
        return f"{got} {unit} for a read of {want}"
    return None


@asynccontextmanager
async def _simulator_peer() -> Any:
    from simulators.modbus_plc import ModbusPLCSimulator

    simulator = ModbusPLCSimulator(seed=1)
    port = await simulator.start("127.0.0.1", 0)
    try:
        yield {"url": f"modbus+tcp://127.0.0.1:{port}"}
    finally:
        await simulator.stop()
