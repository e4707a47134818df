"""Read replies decoded with numpy, registered with the pymodbus client it reads through.

pymodbus decodes a register reply one ``struct.unpack`` per register into a list, a coil
reply one bit at a time, and then formats the whole reply, every register in it, for a
debug log line that is off. At 1,000 tags every 100 ms that was a sixth of a bare
pymodbus poll loop's profile, and these classes cut its CPU by 30 %
(bench/bench_modbus.py, bare vs bare+np). They subclass pymodbus's reply classes, so
the wire format and ``isinstance`` stay as they were; they hold the payload as a numpy
array, one ``frombuffer`` per reply, describe themselves by its size, and note a reply
that contradicts itself instead of refusing it (see ``_NumpyReply``). They go in through
the client's own extension point (``client.register``), per client, so nothing global in
pymodbus changes.
"""

from __future__ import annotations

import numpy as np
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)


class _NumpyReply:
    """Described by its size, not its values: pymodbus formats every reply for a debug
    line whether or not debug logging is on.

    A reply whose byte count disagrees with the bytes it carries is kept, with
    ``problem`` saying so, instead of being refused: pymodbus refuses it by raising in
    the transport's ``data_received``, which drops the connection (with an asyncio
    traceback in the log) and so fails every block of the source until the reconnect.
    Kept, only its own block is flagged. On TCP the frame length comes from the MBAP
    header, so the stream stays in step; on RTU the framer has already checked the CRC.
    """

    dev_id: int
    transaction_id: int
    payload: str  # the attribute holding the array
    problem: str | None = None  # why the reply is not well formed, if it is not

    def __str__(self) -> str:
        size = len(getattr(self, self.payload))
        return (
            f"{type(self).__name__}(dev_id={self.dev_id}, "
            f"transaction_id={self.transaction_id}, {self.payload}={size})"
        )

    def _payload_size(self, data: bytes) -> int:
        """How many payload bytes to decode: those the byte count announces, at most
        those the reply carries; notes a problem when the two differ."""
        carried = max(len(data) - 1, 0)
        announced = data[0] if data else 0
        if not data or announced != carried:
            self.problem = f"byte count {announced} for {carried} bytes"
        return min(announced, carried)


class _RegisterReply(_NumpyReply):
    """``registers``: a read-only big-endian uint16 array over the reply's bytes."""

    registers: np.ndarray
    payload = "registers"

    def decode(self, data: bytes) -> None:
        size = self._payload_size(data)
        if size % 2 and self.problem is None:
            self.problem = f"odd byte count {size} for registers"
        self.registers = np.frombuffer(data, ">u2", count=size // 2, offset=1 if size else 0)


class _BitReply(_NumpyReply):
    """``bits``: a bool array of every bit of the reply's bytes (a whole number of bytes,
    as pymodbus gives them)."""

    bits: np.ndarray
    payload = "bits"

    def decode(self, data: bytes) -> None:
        size = self._payload_size(data)
        packed = np.frombuffer(data, np.uint8, count=size, offset=1 if size else 0)
        self.bits = np.unpackbits(packed, bitorder="little").view(bool)


# pymodbus declares ``registers: list[int]`` and ``bits: list[bool]``; these hold arrays
class HoldingRegistersReply(_RegisterReply, ReadHoldingRegistersResponse):  # type: ignore[misc]
    pass


class InputRegistersReply(_RegisterReply, ReadInputRegistersResponse):  # type: ignore[misc]
    pass


class CoilsReply(_BitReply, ReadCoilsResponse):  # type: ignore[misc]
    pass


class DiscreteInputsReply(_BitReply, ReadDiscreteInputsResponse):  # type: ignore[misc]
    pass


REPLIES: tuple[type[ModbusPDU], ...] = (
    HoldingRegistersReply,
    InputRegistersReply,
    CoilsReply,
    DiscreteInputsReply,
)


def use_numpy_replies(client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> None:
    """Have ``client`` decode the four read replies into numpy arrays."""
    for reply in REPLIES:
        client.register(reply)
