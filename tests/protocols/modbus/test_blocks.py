"""Modbus block planning, register decoding and address parsing, without a device."""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from protocols.modbus.blocks import Block, plan_blocks
from protocols.modbus.config import (
    BIT_TABLES,
    Address,
    ModbusSourceConfig,
    ModbusTagConfig,
    parse_address,
)

ORDERS = ("big", "little")
STRUCT_FORMAT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
KNOWN_VALUES: dict[str, list[Any]] = {
    "int16": [0, 1, -1, 12345, -32768, 32767],
    "uint16": [0, 1, 0x1234, 0x8000, 65535],
    "int32": [0, -1, 0x01020304, -(2**31), 2**31 - 1, -123456789],
    "uint32": [0, 1, 0x01020304, 0x80000000, 2**32 - 1],
    "int64": [0, -1, 0x0102030405060708, -(2**63), 2**63 - 1, 2**53 + 1, -(2**53) - 1],
    "uint64": [0, 1, 0x0102030405060708, 2**63, 2**64 - 1, 2**53 + 1],
    "float32": [0.0, -0.0, 1.0, -2.5, 3.4028234663852886e38, 1.401298464324817e-45, math.inf],
    "float64": [0.0, 1.0, -2.5, math.pi, 1.7976931348623157e308, 5e-324, -math.inf],
}


def tag(
    address: str, kind: str | None = None, name: str | None = None, **extra: Any
) -> ModbusTagConfig:
    fields: dict[str, Any] = {"name": name or address.replace(":", "_"), "address": address}
    if kind is not None:
        fields["type"] = kind
    return ModbusTagConfig(**fields, **extra)


def plan(
    tags: Sequence[ModbusTagConfig],
    max_gap: int = 16,
    max_registers: int = 125,
    max_bits: int = 2000,
) -> list[Block]:
    return plan_blocks(tags, list(range(len(tags))), max_gap, max_registers, max_bits)


def encode(value: Any, kind: str, byte_order: str, word_order: str) -> list[int]:
    """Registers a PLC holds for ``value``: big-endian words unless told otherwise.

    word_order little puts the least significant register first; byte_order little swaps
    the two bytes inside every register.
    """
    raw = struct.pack(">" + STRUCT_FORMAT[kind], value)
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [word[::-1] for word in words]
    return [int.from_bytes(word, "big") for word in words]


def expected(value: Any, kind: str) -> float:
    """What the float64 value column can hold: the value, correctly rounded to float64."""
    if kind.startswith("float"):
        return float(
            struct.unpack(">" + STRUCT_FORMAT[kind], struct.pack(">" + STRUCT_FORMAT[kind], value))[
                0
            ]
        )
    return float(value)


def same(a: float, b: float) -> bool:
    """Bit-exact float comparison that tells -0.0 from 0.0."""
    return struct.pack("<d", a) == struct.pack("<d", b)


def registers_for(block: Block, placed: dict[int, list[int]]) -> np.ndarray:
    """A block's registers: filler everywhere, ``placed`` (absolute address -> words) on top."""
    registers = np.full(block.count, 0xDEAD, np.uint16)
    for address, words in placed.items():
        registers[address - block.start : address - block.start + len(words)] = words
    return registers


def decode_by_tag(block: Block, registers: np.ndarray) -> tuple[dict[int, float], dict[int, Any]]:
    values, text = block.decoder.decode_registers(registers)
    assert values.dtype == np.float64
    assert values.shape == block.tags.shape
    by_tag = {int(i): float(v) for i, v in zip(block.tags, values, strict=True)}
    texts = {} if text is None else {int(i): t for i, t in zip(block.tags, text, strict=True)}
    return by_tag, texts


# --- planning -----------------------------------------------------------------------------


def spans(blocks: Sequence[Block]) -> list[tuple[str, int, int]]:
    return [(b.table, b.start, b.count) for b in blocks]


def test_neighbours_merge_into_one_block() -> None:
    tags = [tag("hr:3"), tag("hr:0"), tag("hr:1", "float32"), tag("hr:8", "float64")]
    blocks = plan(tags)
    assert spans(blocks) == [("hr", 0, 12)]
    # Decode order is address order; block.tags maps it back to the configured tags.
    assert blocks[0].tags.tolist() == [1, 2, 0, 3]


def test_gap_up_to_max_gap_merges_and_beyond_splits() -> None:
    # hr:0 ends at 1; hr:17 leaves 16 unused registers, hr:18 leaves 17.
    assert spans(plan([tag("hr:0"), tag("hr:17")], max_gap=16)) == [("hr", 0, 18)]
    assert spans(plan([tag("hr:0"), tag("hr:18")], max_gap=16)) == [("hr", 0, 1), ("hr", 18, 1)]
    # The gap counts from the end of a multi-register tag, not its start.
    assert spans(plan([tag("hr:0", "float64"), tag("hr:20")], max_gap=16)) == [("hr", 0, 21)]
    assert spans(plan([tag("hr:0"), tag("hr:1")], max_gap=0)) == [("hr", 0, 2)]
    assert spans(plan([tag("hr:0"), tag("hr:2")], max_gap=0)) == [("hr", 0, 1), ("hr", 2, 1)]


def test_blocks_never_exceed_max_registers() -> None:
    tags = [tag(f"hr:{i}", name=f"t{i}") for i in range(300)]
    blocks = plan(tags)
    assert spans(blocks) == [("hr", 0, 125), ("hr", 125, 125), ("hr", 250, 50)]
    assert sorted(i for b in blocks for i in b.tags.tolist()) == list(range(300))


def test_multi_register_tag_that_would_cross_the_limit_starts_a_new_block() -> None:
    tags = [tag(f"hr:{i}", name=f"t{i}") for i in range(124)]
    tags.append(tag("hr:124", "float32", name="f"))
    blocks = plan(tags)
    assert spans(blocks) == [("hr", 0, 124), ("hr", 124, 2)]
    assert blocks[1].tags.tolist() == [124]


def test_max_registers_is_configurable() -> None:
    tags = [tag(f"ir:{i}", name=f"t{i}") for i in range(10)]
    assert spans(plan(tags, max_registers=4)) == [
        ("ir", 0, 4),
        ("ir", 4, 4),
        ("ir", 8, 2),
    ]


def test_blocks_never_exceed_max_bits() -> None:
    tags = [tag(f"coil:{i}", name=f"c{i}") for i in range(2001)]
    assert spans(plan(tags)) == [("coil", 0, 2000), ("coil", 2000, 1)]
    di = [tag(f"di:{i * 10}", name=f"d{i}") for i in range(30)]
    assert spans(plan(di, max_bits=100)) == [("di", 0, 91), ("di", 100, 91), ("di", 200, 91)]


def test_one_block_per_table() -> None:
    tags = [tag("hr:0"), tag("ir:0"), tag("coil:0"), tag("di:0"), tag("hr:1"), tag("coil:1")]
    blocks = plan(tags)
    assert spans(blocks) == [("coil", 0, 2), ("di", 0, 1), ("hr", 0, 2), ("ir", 0, 1)]
    assert [b.is_bits for b in blocks] == [True, True, False, False]
    assert {b.table: b.tags.tolist() for b in blocks} == {
        "coil": [2, 5],
        "di": [3],
        "hr": [0, 4],
        "ir": [1],
    }


def test_overlapping_tags_share_a_block() -> None:
    tags = [tag("hr:34.1"), tag("hr:34"), tag("hr:34.15"), tag("hr:33", "uint32")]
    blocks = plan(tags)
    assert spans(blocks) == [("hr", 33, 2)]
    values, _ = decode_by_tag(blocks[0], np.array([0x1234, 0x8002], np.uint16))
    assert values == {0: 1.0, 1: float(0x8002), 2: 1.0, 3: float(0x12348002)}


def test_plan_only_the_given_indices() -> None:
    tags = [tag("hr:0"), tag("hr:1"), tag("hr:2"), tag("ir:7")]
    blocks = plan_blocks(tags, [2, 0], 16, 125, 2000)
    assert spans(blocks) == [("hr", 0, 3)]
    assert blocks[0].tags.tolist() == [0, 2]
    assert plan_blocks(tags, [], 16, 125, 2000) == []


def test_full_size_string_takes_a_whole_block() -> None:
    tags = [tag("hr:0", "string", length=250), tag("hr:125")]
    assert spans(plan(tags)) == [("hr", 0, 125), ("hr", 125, 1)]


TABLES = ("hr", "ir", "coil", "di")
REGISTER_KINDS = ("uint16", "int32", "float32", "float64", "uint64")


@st.composite
def tag_sets(draw: st.DrawFn) -> list[ModbusTagConfig]:
    count = draw(st.integers(min_value=1, max_value=40))
    tags = []
    for i in range(count):
        table = draw(st.sampled_from(TABLES))
        index = draw(st.integers(min_value=0, max_value=400))
        if table in BIT_TABLES:
            tags.append(tag(f"{table}:{index}", name=f"t{i}"))
        elif draw(st.booleans()):
            tags.append(tag(f"{table}:{index}", draw(st.sampled_from(REGISTER_KINDS)), f"t{i}"))
        else:
            bit = draw(st.integers(min_value=0, max_value=15))
            tags.append(tag(f"{table}:{index}.{bit}", name=f"t{i}"))
    return tags


@settings(max_examples=150, deadline=None)
@given(
    tags=tag_sets(),
    max_gap=st.integers(min_value=0, max_value=30),
    max_registers=st.integers(min_value=4, max_value=125),
    max_bits=st.integers(min_value=1, max_value=60),
)
def test_planning_invariants(
    tags: list[ModbusTagConfig], max_gap: int, max_registers: int, max_bits: int
) -> None:
    blocks = plan(tags, max_gap, max_registers, max_bits)
    # Every tag is read exactly once.
    assert sorted(i for b in blocks for i in b.tags.tolist()) == list(range(len(tags)))
    for block in blocks:
        limit = max_bits if block.table in BIT_TABLES else max_registers
        assert 1 <= block.count <= limit
        for index in block.tags.tolist():
            address = tags[index].parsed_address
            assert address.table == block.table
            assert block.start <= address.index
            assert address.index + tags[index].register_count <= block.start + block.count
        # The block starts and ends on a tag: nothing unused is read at the edges.
        firsts = [tags[i].parsed_address.index for i in block.tags.tolist()]
        ends = [tags[i].parsed_address.index + tags[i].register_count for i in block.tags.tolist()]
        assert min(firsts) == block.start
        assert max(ends) == block.start + block.count
        assert firsts == sorted(firsts)
    # Within a table, blocks are in address order and could not have been merged.
    for before, after in itertools.pairwise(blocks):
        if before.table != after.table:
            assert before.table < after.table
            continue
        head = tags[int(after.tags[0])]
        gap = after.start - (before.start + before.count)
        limit = max_bits if after.table in BIT_TABLES else max_registers
        span = max(before.start + before.count, after.start + head.register_count) - before.start
        assert gap > max_gap or span > limit


# --- decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("byte_order", "word_order", "registers"),
    [
        ("big", "big", [0x3F80, 0x0000]),
        ("big", "little", [0x0000, 0x3F80]),
        ("little", "big", [0x803F, 0x0000]),
        ("little", "little", [0x0000, 0x803F]),
    ],
)
def test_float32_one_in_every_order(byte_order: str, word_order: str, registers: list[int]) -> None:
    # 1.0f is 0x3F800000: a fixed point that does not depend on this file's encode().
    assert encode(1.0, "float32", byte_order, word_order) == registers
    t = tag("hr:0", "float32", byte_order=byte_order, word_order=word_order)
    (block,) = plan([t])
    values, text = block.decoder.decode_registers(np.array(registers, np.uint16))
    assert values.tolist() == [1.0]
    assert text is None


def test_int32_word_order_in_registers() -> None:
    assert encode(0x01020304, "int32", "big", "big") == [0x0102, 0x0304]
    assert encode(0x01020304, "int32", "big", "little") == [0x0304, 0x0102]
    assert encode(0x01020304, "int32", "little", "big") == [0x0201, 0x0403]
    assert encode(0x0102030405060708, "uint64", "big", "little") == [
        0x0708,
        0x0506,
        0x0304,
        0x0102,
    ]


@pytest.mark.parametrize("word_order", ORDERS)
@pytest.mark.parametrize("byte_order", ORDERS)
@pytest.mark.parametrize("kind", sorted(STRUCT_FORMAT))
def test_decode_every_type_and_order(kind: str, byte_order: str, word_order: str) -> None:
    values = KNOWN_VALUES[kind]
    size = struct.calcsize(STRUCT_FORMAT[kind]) // 2
    # Tags one register apart from each other, with a uint16 neighbour in between each.
    tags: list[ModbusTagConfig] = []
    placed: dict[int, list[int]] = {}
    address = 5
    for i, value in enumerate(values):
        tags.append(
            tag(f"hr:{address}", kind, f"v{i}", byte_order=byte_order, word_order=word_order)
        )
        placed[address] = encode(value, kind, byte_order, word_order)
        address += size
        tags.append(tag(f"hr:{address}", "uint16", f"n{i}"))
        placed[address] = [i]
        address += 1
    (block,) = plan(tags)
    assert block.start == 5
    decoded, text = decode_by_tag(block, registers_for(block, placed))
    assert text == {}
    for i, value in enumerate(values):
        assert same(decoded[2 * i], expected(value, kind)), (value, decoded[2 * i])
        assert decoded[2 * i + 1] == i


@pytest.mark.parametrize("word_order", ORDERS)
@pytest.mark.parametrize("byte_order", ORDERS)
@pytest.mark.parametrize("kind", sorted(STRUCT_FORMAT))
def test_packed_tags_of_one_type_decode_alike_with_or_without_the_gather(
    kind: str, byte_order: str, word_order: str
) -> None:
    values = KNOWN_VALUES[kind]
    size = struct.calcsize(STRUCT_FORMAT[kind]) // 2
    tags = [
        tag(f"hr:{3 + i * size}", kind, f"v{i}", byte_order=byte_order, word_order=word_order)
        for i in range(len(values))
    ]
    placed = {3 + i * size: encode(v, kind, byte_order, word_order) for i, v in enumerate(values)}
    (block,) = plan(tags)
    natural = byte_order == "big" and (word_order == "big" or size == 1)
    assert (block.decoder.dense is not None) == natural, "the view path only for natural order"
    decoded, _ = decode_by_tag(block, registers_for(block, placed))
    assert [decoded[i] for i in range(len(values))] == [expected(v, kind) for v in values]
    out = np.full(len(values) + 2, -1.0)
    block.decoder.decode_registers(registers_for(block, placed), out=out[1:-1])
    assert out[[0, -1]].tolist() == [-1.0, -1.0], "only the given slice is written"


def test_decode_integers_exactly_within_float64_precision() -> None:
    for kind, value in [("int64", -(2**53)), ("uint64", 2**53), ("int32", -(2**31))]:
        (block,) = plan([tag("ir:0", kind, word_order="little")])
        values, _ = block.decoder.decode_registers(
            np.array(encode(value, kind, "big", "little"), np.uint16)
        )
        assert int(values[0]) == value


def test_mixed_types_and_orders_in_one_block() -> None:
    specs = [
        ("hr:100", "float32", "little", "little", -1.5),
        ("hr:102", "int16", "big", "big", -2),
        ("hr:103", "uint32", "big", "little", 4_000_000_000),
        ("hr:105", "float64", "little", "big", 1e-300),
        ("hr:109", "float32", "big", "big", 123.25),
        ("hr:111", "int64", "little", "little", -(10**15)),
    ]
    tags = [
        tag(a, k, f"t{i}", byte_order=b, word_order=w) for i, (a, k, b, w, _) in enumerate(specs)
    ]
    (block,) = plan(tags)
    placed = {parse_address(a).index: encode(v, k, b, w) for a, k, b, w, v in specs}
    decoded, _ = decode_by_tag(block, registers_for(block, placed))
    assert decoded == {i: expected(v, k) for i, (_, k, _, _, v) in enumerate(specs)}


FINITE = {
    "float32": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "float64": st.floats(allow_nan=False, allow_infinity=False),
}
INTEGER_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[str, Any]:
    kind = draw(st.sampled_from(sorted(STRUCT_FORMAT)))
    if kind in FINITE:
        return kind, draw(FINITE[kind])
    low, high = INTEGER_RANGE[kind]
    return kind, draw(st.integers(min_value=low, max_value=high))


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(
        st.tuples(typed_values(), st.sampled_from(ORDERS), st.sampled_from(ORDERS)),
        min_size=1,
        max_size=8,
    ),
    start=st.integers(min_value=0, max_value=60000),
    gaps=st.lists(st.integers(min_value=0, max_value=3), min_size=8, max_size=8),
)
def test_random_values_roundtrip(
    items: list[tuple[tuple[str, Any], str, str]], start: int, gaps: list[int]
) -> None:
    tags: list[ModbusTagConfig] = []
    placed: dict[int, list[int]] = {}
    address = start
    for i, ((kind, value), byte_order, word_order) in enumerate(items):
        address += gaps[i]
        tags.append(
            tag(f"ir:{address}", kind, f"t{i}", byte_order=byte_order, word_order=word_order)
        )
        placed[address] = encode(value, kind, byte_order, word_order)
        address += len(placed[address])
    (block,) = plan(tags)
    decoded, _ = decode_by_tag(block, registers_for(block, placed))
    for i, ((kind, value), _, _) in enumerate(items):
        assert same(decoded[i], expected(value, kind)), (kind, value, decoded[i])
        if kind in FINITE or abs(value) <= 2**53:
            assert decoded[i] == value  # exact: no rounding at all where float64 can hold it


def test_bits_of_a_register() -> None:
    tags = [tag(f"hr:7.{bit}", name=f"b{bit}") for bit in range(16)]
    tags.append(tag("hr:8.0", name="next"))
    (block,) = plan(tags)
    register = 0b1000_0000_0010_0101  # bits 0, 2, 5 and 15
    decoded, _ = decode_by_tag(block, np.array([register, 0xFFFE], np.uint16))
    assert [decoded[bit] for bit in range(16)] == [
        float((register >> bit) & 1) for bit in range(16)
    ]
    assert [bit for bit in range(16) if decoded[bit]] == [0, 2, 5, 15]
    assert decoded[16] == 0.0


def test_bit_decode_is_not_fooled_by_byte_order_of_neighbours() -> None:
    tags = [
        tag("ir:0", "float32", "f", byte_order="little", word_order="little"),
        tag("ir:2.3", name="flag"),
        tag("ir:2", "uint16", "word"),
    ]
    (block,) = plan(tags)
    decoded, _ = decode_by_tag(
        block, np.array([*encode(2.0, "float32", "little", "little"), 0x0008], np.uint16)
    )
    assert decoded == {0: 2.0, 1: 1.0, 2: 8.0}


def string_registers(data: bytes) -> list[int]:
    if len(data) % 2:
        data += b"\0"
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def test_strings_nul_padded_and_odd_length() -> None:
    tags = [
        tag("hr:10", "string", "full", length=6),
        tag("hr:13", "string", "padded", length=8),
        tag("hr:17", "string", "odd", length=3),
        tag("hr:19", "uint16", "after"),
        tag("hr:20", "string", "utf8", length=4),
    ]
    (block,) = plan(tags)
    assert block.count == 12
    placed = {
        10: string_registers(b"ABCDEF"),
        13: string_registers(b"AB\0\0\0\0\0\0"),
        17: string_registers(b"XYZQ"),  # 4th byte is beyond the 3-byte tag
        19: [42],
        20: string_registers("é".encode() + b"\0\0"),
    }
    values, text = block.decoder.decode_registers(registers_for(block, placed))
    assert text is not None
    assert text.tolist() == ["ABCDEF", "AB", "XYZ", None, "é"]
    assert math.isnan(values[0])
    assert math.isnan(values[1])
    assert math.isnan(values[2])
    assert values[3] == 42.0


def test_string_stops_at_first_nul() -> None:
    (block,) = plan([tag("hr:0", "string", "s", length=6)])
    _, text = block.decoder.decode_registers(np.array(string_registers(b"OK\0JUNK"[:6]), np.uint16))
    assert text is not None
    assert text.tolist() == ["OK"]


def test_string_space_padding_is_trimmed() -> None:
    (block,) = plan([tag("hr:0", "string", "s", length=8)])
    _, text = block.decoder.decode_registers(np.array(string_registers(b" A B    "), np.uint16))
    assert text is not None
    assert text.tolist() == [" A B"]


def test_coils_decode_with_padded_bit_lists() -> None:
    tags = [tag("coil:13", name="c13"), tag("coil:3", name="c3"), tag("coil:10", name="c10")]
    (block,) = plan(tags)
    assert (block.table, block.start, block.count) == ("coil", 3, 11)
    assert block.is_bits
    assert block.tags.tolist() == [1, 2, 0]
    # pymodbus pads the bits to whole bytes; the padding must not shift anything.
    bits = [False] * 16
    bits[0] = True  # coil:3
    bits[7] = True  # coil:10
    bits[13] = True  # padding past coil:13 (offset 10)
    values = block.decode_bits(bits)
    assert values.dtype == np.float64
    assert values.tolist() == [1.0, 1.0, 0.0]
    bits[10] = True  # coil:13
    bits[0] = False
    assert block.decode_bits(bits).tolist() == [0.0, 1.0, 1.0]


def test_discrete_inputs_decode() -> None:
    tags = [tag(f"di:{100 + 2 * i}", name=f"d{i}") for i in range(9)]
    (block,) = plan(tags)
    assert (block.start, block.count) == (100, 17)
    pattern = [i % 3 == 0 for i in range(9)]
    bits = [False] * 24
    for i, on in enumerate(pattern):
        bits[2 * i] = on
        bits[2 * i + 1] = not on  # unused addresses between the tags
    assert block.decode_bits(bits).tolist() == [float(on) for on in pattern]


# --- addresses and config -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("hr:0", Address("hr", 0)),
        ("ir:65535", Address("ir", 65535)),
        ("coil:3", Address("coil", 3)),
        ("di:0", Address("di", 0)),
        ("hr:22.3", Address("hr", 22, 3)),
        ("ir:1.15", Address("ir", 1, 15)),
        (" hr:5 ", Address("hr", 5)),
    ],
)
def test_parse_address(text: str, address: Address) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("xx:5", "expected"),
        ("hr5", "expected"),
        ("hr:", "expected"),
        ("hr:-1", "expected"),
        ("40101", "expected"),
        ("hr:123456", "expected"),
        ("hr:70000", "beyond 65535"),
        ("hr:65536", "beyond 65535"),
        ("coil:3.1", "single bits already"),
        ("di:0.0", "single bits already"),
        ("hr:1.16", "beyond 15"),
        ("hr:1.", "expected"),
    ],
)
def test_parse_address_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(text)


def test_tag_types_and_register_counts() -> None:
    assert tag("hr:0").data_type == "uint16"
    assert tag("hr:0.3").data_type == "bool"
    assert tag("coil:9").data_type == "bool"
    assert tag("hr:0", "float64").register_count == 4
    assert tag("hr:0", "int32").register_count == 2
    assert tag("hr:0", "string", length=5).register_count == 3
    assert tag("hr:0", "string", length=6).register_count == 3
    assert tag("coil:0").register_count == 1


@pytest.mark.parametrize(
    ("address", "kind", "extra", "message"),
    [
        ("coil:1", "int16", {}, "does not fit single-bit"),
        ("hr:1.2", "uint16", {}, "does not fit single-bit"),
        ("hr:1", "bool", {}, "needs a bit"),
        ("hr:1", "string", {}, "needs length"),
        ("hr:1", "uint16", {"length": 4}, "only for type"),
        ("hr:65535", "float32", {}, "runs past address 65535"),
        ("hr:65534", "float32", {"byte_order": "middle"}, "byte_order"),
    ],
)
def test_tag_config_errors(address: str, kind: str, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        tag(address, kind, **extra)


def test_last_register_is_usable() -> None:
    assert tag("hr:65534", "float32").register_count == 2
    assert tag("ir:65535").parsed_address == Address("ir", 65535)


def test_source_url() -> None:
    source = ModbusSourceConfig(
        name="plc", url="modbus+tcp://10.1.2.3", tags=[{"name": "a", "address": "hr:0"}]
    )
    assert (source.host, source.port) == ("10.1.2.3", 502)
    source = ModbusSourceConfig(
        name="plc", url="modbus+tcp://plc.local:5020", tags=[{"name": "a", "address": "hr:0"}]
    )
    assert (source.host, source.port) == ("plc.local", 5020)
    for url in ("tcp://h", "modbus+tcp://", "modbus+tcp://h:99999", "modbus+tcp://h:x"):
        with pytest.raises(ValidationError, match="url"):
            ModbusSourceConfig(name="plc", url=url, tags=[{"name": "a", "address": "hr:0"}])


def test_source_rejects_a_tag_larger_than_one_read() -> None:
    """A tag that cannot fit max_registers would make a read the device refuses."""
    with pytest.raises(ValidationError, match="max_registers"):
        ModbusSourceConfig(
            name="plc",
            url="modbus+tcp://h",
            max_registers=1,
            tags=[{"name": "a", "address": "hr:0", "type": "float32"}],
        )
    with pytest.raises(ValidationError, match="max_registers"):
        ModbusSourceConfig(
            name="plc",
            url="modbus+tcp://h",
            max_registers=100,
            tags=[{"name": "s", "address": "hr:0", "type": "string", "length": 202}],
        )
    ok = ModbusSourceConfig(
        name="plc",
        url="modbus+tcp://h",
        max_registers=2,
        tags=[{"name": "a", "address": "hr:0", "type": "float32"}],
    )
    (block,) = plan(ok.tags, ok.max_gap, ok.max_registers, ok.max_bits)
    assert block.count == 2


@settings(max_examples=100, deadline=None)
@given(
    max_registers=st.integers(min_value=1, max_value=125),
    kinds=st.lists(
        st.sampled_from(["uint16", "int32", "float64", "string"]), min_size=1, max_size=12
    ),
)
def test_accepted_configs_plan_within_max_registers(max_registers: int, kinds: list[str]) -> None:
    tags = []
    address = 0
    needed = max({"uint16": 1, "int32": 2, "float64": 4, "string": 5}[kind] for kind in kinds)
    for i, kind in enumerate(kinds):
        extra = {"length": 9} if kind == "string" else {}
        tags.append({"name": f"t{i}", "address": f"hr:{address}", "type": kind, **extra})
        address += 5
    if max_registers < needed:  # some tag cannot fit one read: refused, naming the limit
        with pytest.raises(ValidationError, match="max_registers"):
            ModbusSourceConfig(
                name="plc", url="modbus+tcp://h", max_registers=max_registers, tags=tags
            )
        return
    source = ModbusSourceConfig(
        name="plc", url="modbus+tcp://h", max_registers=max_registers, tags=tags
    )
    blocks = plan(source.tags, source.max_gap, source.max_registers, source.max_bits)
    assert all(block.count <= max_registers for block in blocks)


def test_strings_with_bytes_swapped_inside_registers() -> None:
    # Many PLCs store "ABCD" as the registers 0x4241 0x4443 (byte order little).
    swapped = tag("hr:0", "string", "swapped", length=5, byte_order="little")
    (block,) = plan([swapped])
    registers = np.array([0x4241, 0x4443, 0x0045], np.uint16)
    _, texts = decode_by_tag(block, registers)
    assert texts == {0: "ABCDE"}
