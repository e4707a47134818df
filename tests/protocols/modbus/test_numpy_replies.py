"""The numpy reply classes decode exactly what pymodbus's own classes decode."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse
from pymodbus.pdu.decoders import DecodePDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from protocols.modbus.replies import (
    REPLIES,
    CoilsReply,
    DiscreteInputsReply,
    HoldingRegistersReply,
    InputRegistersReply,
)

REGISTER_PAIRS = [
    (HoldingRegistersReply, ReadHoldingRegistersResponse),
    (InputRegistersReply, ReadInputRegistersResponse),
]
BIT_PAIRS = [(CoilsReply, ReadCoilsResponse), (DiscreteInputsReply, ReadDiscreteInputsResponse)]


@given(st.lists(st.integers(0, 0xFFFF), max_size=125), st.binary(max_size=3))
def test_registers_match_pymodbus(registers: list[int], trailing: bytes) -> None:
    data = struct.pack(f">B{len(registers)}H", 2 * len(registers), *registers) + trailing
    for ours, theirs in REGISTER_PAIRS:
        reply, reference = ours(), theirs()
        reply.decode(data)
        reference.decode(data)
        assert reply.registers.tolist() == reference.registers == registers
        assert reply.registers.dtype == np.dtype(">u2")
        assert (reply.problem is None) == (not trailing), "bytes beyond the count are noted"


@given(st.binary(min_size=1, max_size=251))
def test_bits_match_pymodbus(packed: bytes) -> None:
    data = bytes([len(packed)]) + packed
    for ours, theirs in BIT_PAIRS:
        reply, reference = ours(), theirs()
        reply.decode(data)
        reference.decode(data)
        assert reply.bits.tolist() == reference.bits
        assert len(reply.bits) == 8 * len(packed)
        assert reply.problem is None


@pytest.mark.parametrize(("ours", "theirs"), REGISTER_PAIRS)
def test_a_byte_count_beyond_the_packet_is_noted_where_pymodbus_raises(
    ours: type[HoldingRegistersReply], theirs: type[ReadHoldingRegistersResponse]
) -> None:
    truncated = struct.pack(">B3H", 8, 1, 2, 3)  # says 4 registers, holds 3
    with pytest.raises(ModbusIOException):  # raised in data_received: the connection drops
        theirs().decode(truncated)
    reply = ours()
    reply.decode(truncated)
    assert reply.problem == "byte count 8 for 6 bytes"
    assert reply.registers.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("data", "problem", "size"),
    [
        (b"", "byte count 0 for 0 bytes", 0),  # no byte count at all
        (b"\x03\x00\x01\x00", "odd byte count 3 for registers", 1),
        (b"\x02\x00", "byte count 2 for 1 bytes", 0),
    ],
)
def test_garbled_register_replies_are_noted_never_raise(
    data: bytes, problem: str, size: int
) -> None:
    reply = HoldingRegistersReply()
    reply.decode(data)
    assert reply.problem == problem
    assert len(reply.registers) == size


@given(st.binary(max_size=40))
def test_any_bytes_decode_without_raising_and_note_what_does_not_add_up(data: bytes) -> None:
    for reply in (HoldingRegistersReply(), CoilsReply()):
        reply.decode(data)
        well_formed = bool(data) and data[0] == len(data) - 1
        if isinstance(reply, HoldingRegistersReply):
            well_formed = well_formed and data[0] % 2 == 0
        assert (reply.problem is None) == well_formed


def test_registered_classes_decode_whole_frames_and_describe_themselves_without_values() -> None:
    decoder = DecodePDU(is_server=False)
    for reply in REPLIES:
        decoder.register(reply)
    pdu = decoder.decode(struct.pack(">BB3H", 3, 6, 7, 8, 9))
    assert isinstance(pdu, HoldingRegistersReply)
    assert pdu.registers.tolist() == [7, 8, 9]
    assert str(pdu) == "HoldingRegistersReply(dev_id=0, transaction_id=0, registers=3)"
    coils = decoder.decode(bytes([1, 1, 0b101]))
    assert isinstance(coils, CoilsReply)
    assert coils.bits[:3].tolist() == [True, False, True]
    assert str(coils) == "CoilsReply(dev_id=0, transaction_id=0, bits=8)"
    garbled = decoder.decode(struct.pack(">BB3H", 3, 8, 1, 2, 3))
    assert isinstance(garbled, HoldingRegistersReply)
    assert garbled.problem == "byte count 8 for 6 bytes"
