"""How each Sparkplug data type becomes samples: a number, a text, or a block of them.

A metric's data type is fixed by its birth certificate, so each known metric carries a
``Kind`` chosen once, and decoding a data message reads one protobuf field per metric
without asking which one is set.

- Integers travel in ``int_value`` (uint32) or ``long_value`` (uint64); implementations
  differ on which for UInt32 and the narrow types (Tahu's JavaScript client puts UInt32 in
  ``long_value``), so the 32-bit kinds read whichever is set. Signed types are two's
  complement of the field's width (Tahu's clients sign-extend an Int8 or Int16 to 32
  bits); a value that is the raw 8- or 16-bit pattern is read as such.
- Boolean is 0.0/1.0; DateTime is milliseconds since the epoch, stored as that number.
- String, Text and UUID go to the text column (value NaN).
- Arrays (Sparkplug 3.0, 6.4.17) are little-endian packed in ``bytes_value`` and become
  one sample per element; BooleanArray is a uint32 count followed by bits, most significant
  first; StringArray is NUL-terminated UTF-8 strings.
- DataSet, Template, Bytes, File and property types have no sample form: unsupported.
"""

from __future__ import annotations

import enum

import numpy as np

from protocols.sparkplug.schema import DataType


class Kind(enum.IntEnum):
    SIGNED32 = 1  # Int32 in int_value
    NARROW = 13  # Int8, Int16 in int_value
    UNSIGNED32 = 2  # UInt8, UInt16, UInt32 in int_value
    SIGNED64 = 3  # Int64 in long_value
    UNSIGNED64 = 4  # UInt64, DateTime in long_value
    FLOAT = 5
    DOUBLE = 6
    BOOLEAN = 7
    TEXT = 8
    ARRAY = 9  # numbers packed in bytes_value
    BOOLEAN_ARRAY = 10
    STRING_ARRAY = 11
    UNSUPPORTED = 12


KINDS: dict[int, Kind] = {
    DataType.Int8: Kind.NARROW,
    DataType.Int16: Kind.NARROW,
    DataType.Int32: Kind.SIGNED32,
    DataType.UInt8: Kind.UNSIGNED32,
    DataType.UInt16: Kind.UNSIGNED32,
    DataType.UInt32: Kind.UNSIGNED32,
    DataType.Int64: Kind.SIGNED64,
    DataType.UInt64: Kind.UNSIGNED64,
    DataType.DateTime: Kind.UNSIGNED64,
    DataType.Float: Kind.FLOAT,
    DataType.Double: Kind.DOUBLE,
    DataType.Boolean: Kind.BOOLEAN,
    DataType.String: Kind.TEXT,
    DataType.Text: Kind.TEXT,
    DataType.UUID: Kind.TEXT,
    DataType.BooleanArray: Kind.BOOLEAN_ARRAY,
    DataType.StringArray: Kind.STRING_ARRAY,
    **{
        code: Kind.ARRAY
        for code in (
            DataType.Int8Array,
            DataType.Int16Array,
            DataType.Int32Array,
            DataType.Int64Array,
            DataType.UInt8Array,
            DataType.UInt16Array,
            DataType.UInt32Array,
            DataType.UInt64Array,
            DataType.FloatArray,
            DataType.DoubleArray,
            DataType.DateTimeArray,
        )
    },
}

ARRAY_DTYPES: dict[int, np.dtype[np.generic]] = {
    DataType.Int8Array: np.dtype("<i1"),
    DataType.Int16Array: np.dtype("<i2"),
    DataType.Int32Array: np.dtype("<i4"),
    DataType.Int64Array: np.dtype("<i8"),
    DataType.UInt8Array: np.dtype("<u1"),
    DataType.UInt16Array: np.dtype("<u2"),
    DataType.UInt32Array: np.dtype("<u4"),
    DataType.UInt64Array: np.dtype("<u8"),
    DataType.FloatArray: np.dtype("<f4"),
    DataType.DoubleArray: np.dtype("<f8"),
    DataType.DateTimeArray: np.dtype("<i8"),
}

_NARROW: dict[int, int] = {DataType.Int8: 8, DataType.Int16: 16}


def kind_of(datatype: int) -> Kind:
    return KINDS.get(datatype, Kind.UNSUPPORTED)


def is_known(datatype: int) -> bool:
    """A data type code the specification defines (unsupported ones included)."""
    return datatype in DataType._value2member_map_ and datatype != DataType.Unknown


def signed32(raw: int, datatype: int) -> int:
    """An Int8/16/32 from ``int_value``: 32-bit two's complement, or the raw narrow pattern."""
    if raw >= 1 << 31:
        return raw - (1 << 32)
    bits = _NARROW.get(datatype)
    if bits is not None and raw >= 1 << (bits - 1):
        return raw - (1 << bits)
    return raw


def signed64(raw: int) -> int:
    return raw - (1 << 64) if raw >= 1 << 63 else raw


class ArrayError(ValueError):
    """A packed array whose bytes do not fit its type."""


def unpack_array(datatype: int, data: bytes) -> np.ndarray:
    """The elements of a numeric or boolean array metric as float64."""
    if datatype == DataType.BooleanArray:
        if len(data) < 4:
            raise ArrayError("BooleanArray shorter than its 4-byte count")
        count = int.from_bytes(data[:4], "little")
        bits = np.unpackbits(np.frombuffer(data, np.uint8, offset=4))
        if count > bits.shape[0]:
            raise ArrayError(f"BooleanArray says {count} values, holds {bits.shape[0]} bits")
        return bits[:count].astype(np.float64)
    dtype = ARRAY_DTYPES[datatype]
    if len(data) % dtype.itemsize:
        raise ArrayError(f"{len(data)} bytes are not a whole number of {dtype.itemsize}-byte items")
    return np.frombuffer(data, dtype).astype(np.float64)


def unpack_strings(data: bytes) -> list[str]:
    """The elements of a StringArray (NUL-terminated UTF-8; a missing last NUL tolerated)."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    try:
        return [part.decode() for part in parts]
    except UnicodeDecodeError as exc:
        raise ArrayError(f"StringArray element is not UTF-8: {exc}") from None


def pack_array(datatype: int, values: np.ndarray) -> bytes:
    """The inverse of :func:`unpack_array` (the simulator and tests publish arrays)."""
    if datatype == DataType.BooleanArray:
        bits = np.packbits(values.astype(bool))
        return len(values).to_bytes(4, "little") + bits.tobytes()
    return np.asarray(values).astype(ARRAY_DTYPES[datatype]).tobytes()
