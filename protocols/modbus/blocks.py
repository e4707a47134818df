"""Planning block reads and decoding them with numpy.

Tags of one rate are merged into as few requests as the protocol allows: neighbouring
addresses of one table join a block while the block stays within the request limit (125
registers, 2000 bits) and the unused stretch between two tags is at most ``max_gap`` (a
device may refuse a read that touches an unmapped address, so gaps are bounded).

Decoding is planned once: for every numeric type in a block, a matrix of byte positions
that puts each tag's bytes in big-endian order, whatever its byte and word order. A poll
then decodes each type group with one gather and one ``view``: no per-sample Python. The
common layout, one numeric type packed back to back in natural byte and word order, skips
the gather: its registers are already the values' big-endian bytes, so a ``view`` suffices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from protocols.modbus.config import BIT_TABLES, REGISTER_TYPES, ModbusTagConfig

_NUMPY_KIND = {"int": "i", "uint": "u", "float": "f"}


def numpy_dtype(kind: str) -> np.dtype:
    """Big-endian numpy dtype of a register type name, e.g. float32 -> >f4."""
    base = kind.rstrip("0123456789")
    return np.dtype(f">{_NUMPY_KIND[base]}{REGISTER_TYPES[kind] * 2}")


def byte_positions(offset: int, registers: int, byte_order: str, word_order: str) -> list[int]:
    """Positions, in a block's big-endian byte stream, of one value's bytes, most significant
    first."""
    order = range(offset, offset + registers)
    words = list(order) if word_order == "big" else list(reversed(order))
    positions: list[int] = []
    for word in words:
        positions += [2 * word, 2 * word + 1] if byte_order == "big" else [2 * word + 1, 2 * word]
    return positions


@dataclass
class _NumericGroup:
    dtype: np.dtype
    slots: np.ndarray  # where the group's values go in the block's output
    positions: np.ndarray  # (tags, bytes) byte positions


@dataclass
class BlockDecoder:
    """Turns one block's raw registers (or bits) into the values of its tags."""

    size: int
    numeric: list[_NumericGroup] = field(default_factory=list)
    bit_slots: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    bit_words: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    bit_shifts: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint16))
    strings: list[tuple[int, np.ndarray, str]] = field(default_factory=list)
    dense: tuple[np.dtype, int, int] | None = None  # (dtype, first, end register) if packed

    def decode_registers(
        self, registers: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The block's values (into ``out`` if given) and its text column, if it has strings."""
        values = np.empty(self.size, np.float64) if out is None else out
        words = registers.astype(">u2", copy=False)
        if self.dense is not None:
            dtype, first, end = self.dense
            values[:] = words[first:end].view(dtype)
            return values, None
        stream = words.view(np.uint8)
        for group in self.numeric:
            values[group.slots] = stream[group.positions].view(group.dtype)[:, 0]
        if self.bit_slots.size:
            values[self.bit_slots] = (registers[self.bit_words] >> self.bit_shifts) & 1
        text = None
        if self.strings:
            text = np.full(self.size, None, dtype=object)
            for slot, positions, encoding in self.strings:
                raw = stream[positions].tobytes()
                text[slot] = raw.split(b"\0", 1)[0].decode(encoding, "replace").rstrip()
                values[slot] = np.nan
        return values, text


@dataclass
class Block:
    """One read request: a table, a start address and a count, and the tags it serves."""

    table: str
    start: int
    count: int
    tags: np.ndarray  # source tag indices, in the order decode() returns their values
    decoder: BlockDecoder

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES

    def decode_bits(self, bits: Sequence[bool]) -> np.ndarray:
        """Coil/discrete-input values; ``bits`` may be padded to a whole byte."""
        return np.asarray(bits[: self.count], dtype=np.float64)[self.decoder.bit_words]


def _make_decoder(
    table: str, start: int, members: list[tuple[int, ModbusTagConfig]]
) -> BlockDecoder:
    decoder = BlockDecoder(size=len(members))
    if table in BIT_TABLES:
        decoder.bit_words = np.array([t.parsed_address.index - start for _, t in members], np.int64)
        return decoder
    by_type: dict[str, list[tuple[int, list[int]]]] = {}
    bits: list[tuple[int, int, int]] = []
    for slot, (_, tag) in enumerate(members):
        address = tag.parsed_address
        offset = address.index - start
        kind = tag.data_type
        if kind == "bool":
            bits.append((slot, offset, address.bit or 0))
        elif kind == "string":
            # byte_order applies inside each register, as for numbers; words stay in order
            positions = byte_positions(offset, tag.register_count, tag.byte_order, "big")
            decoder.strings.append(
                (slot, np.array(positions[: tag.length or 0], np.int64), tag.encoding)
            )
        else:
            positions = byte_positions(offset, REGISTER_TYPES[kind], tag.byte_order, tag.word_order)
            by_type.setdefault(kind, []).append((slot, positions))
    for kind, entries in by_type.items():
        decoder.numeric.append(
            _NumericGroup(
                numpy_dtype(kind),
                np.array([slot for slot, _ in entries], np.int64),
                np.array([positions for _, positions in entries], np.int64),
            )
        )
    if len(decoder.numeric) == 1 and not bits and not decoder.strings:
        decoder.dense = _dense_layout(decoder.numeric[0])
    if bits:
        decoder.bit_slots = np.array([b[0] for b in bits], np.int64)
        decoder.bit_words = np.array([b[1] for b in bits], np.int64)
        decoder.bit_shifts = np.array([b[2] for b in bits], np.uint16)
    return decoder


def _dense_layout(group: _NumericGroup) -> tuple[np.dtype, int, int] | None:
    """Register range of a group whose values lie back to back, in slot order, each in
    natural (big-endian) byte and word order; None if the gather is needed."""
    width = group.dtype.itemsize
    first = int(group.positions[0, 0])
    packed = np.arange(first, first + group.positions.size).reshape(group.positions.shape)
    in_order = np.array_equal(group.slots, np.arange(group.slots.shape[0]))
    if not in_order or first % 2 or not np.array_equal(group.positions, packed):
        return None
    return group.dtype, first // 2, first // 2 + group.slots.shape[0] * width // 2


def plan_blocks(
    tags: Sequence[ModbusTagConfig],
    indices: Sequence[int],
    max_gap: int,
    max_registers: int,
    max_bits: int,
) -> list[Block]:
    """Merge the tags at ``indices`` into block reads, per table, in address order."""
    by_table: dict[str, list[tuple[int, ModbusTagConfig]]] = {}
    for index in indices:
        tag = tags[index]
        by_table.setdefault(tag.parsed_address.table, []).append((index, tag))
    blocks: list[Block] = []
    for table in sorted(by_table):
        limit = max_bits if table in BIT_TABLES else max_registers
        members = sorted(by_table[table], key=lambda m: (m[1].parsed_address.index, m[0]))
        current: list[tuple[int, ModbusTagConfig]] = []
        start = end = 0
        for member in members:
            first = member[1].parsed_address.index
            last = first + member[1].register_count
            if current and first - end <= max_gap and max(end, last) - start <= limit:
                current.append(member)
                end = max(end, last)
                continue
            if current:
                blocks.append(_block(table, start, end, current))
            current, start, end = [member], first, last
        if current:
            blocks.append(_block(table, start, end, current))
    return blocks


def _block(table: str, start: int, end: int, members: list[tuple[int, ModbusTagConfig]]) -> Block:
    return Block(
        table,
        start,
        end - start,
        np.array([index for index, _ in members], np.int32),
        _make_decoder(table, start, members),
    )
