"""Read replies decoded with numpy, registered with the pymodbus client it reads through.

pymodbus decodes a register reply one ``struct.unpack`` per register into a list, a coil
reply one bit at a time, and then formats the whole reply, every register in it, for a
debug log line that is off. At 1,000 tags every 100 ms that was a sixth of a bare
pymodbus poll loop's profile, and these classes cut its CPU by 30 %
(bench/bench_modbus.py, bare vs bare+np). They subclass pymodbus's reply classes, so
the wire format, the byte-count check and ``isinstance`` stay as they were; they only
hold the payload as a numpy array, one ``frombuffer`` per reply, and describe themselves
by its size. They go in through the client's own extension point (``client.register``),
per client, so nothing global in pymodbus changes.
"""

from __future__ import annotations

import numpy as np
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)


class _NumpyReply:
    """Described by its size, not its values: pymodbus formats every reply for a debug
    line whether or not debug logging is on."""

    dev_id: int
    transaction_id: int
    payload: str  # the attribute holding the array

    def __str__(self) -> str:
        size = len(getattr(self, self.payload))
        return (
            f"{type(self).__name__}(dev_id={self.dev_id}, "
            f"transaction_id={self.transaction_id}, {self.payload}={size})"
        )


class _RegisterReply(_NumpyReply):
    """``registers``: a read-only big-endian uint16 array over the reply's bytes."""

    function_code: int
    registers: np.ndarray
    payload = "registers"

    def decode(self, data: bytes) -> None:
        byte_count = data[0]
        if byte_count >= len(data):  # the same check as pymodbus's own decode
            raise ModbusIOException(
                f"byte_count {byte_count} > length of packet {len(data)}",
                function_code=self.function_code,
            )
        self.registers = np.frombuffer(data, ">u2", count=byte_count // 2, offset=1)


class _BitReply(_NumpyReply):
    """``bits``: a bool array of every bit of the reply's bytes (a whole number of bytes,
    as pymodbus gives them)."""

    bits: np.ndarray
    payload = "bits"

    def decode(self, data: bytes) -> None:
        packed = np.frombuffer(data, np.uint8, offset=1)
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
