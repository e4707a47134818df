"""Config model of a Modbus source and its tags.

Addresses are zero-based protocol addresses with the table spelt out (``hr:100``,
``ir:5``, ``coil:3``, ``di:0``; ``hr:22.3`` is bit 3 of holding register 22), because the
Modicon ``40101`` convention is off by one as often as it is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from agent.config.durations import Duration
from agent.config.model import SourceConfig, TagConfig

TABLES = {"hr": "holding", "ir": "input", "coil": "coil", "di": "discrete"}
BIT_TABLES = {"coil", "di"}
REGISTER_TYPES = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
}
DataType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
_ADDRESS = re.compile(r"^(hr|ir|coil|di):(\d{1,5})(?:\.(\d{1,2}))?$")
ADDRESS_EXPECTED = 'expected "hr:N", "ir:N", "coil:N", "di:N" or "hr:N.B" (bit B of a register)'


@dataclass(frozen=True, slots=True)
class Address:
    table: str  # hr | ir | coil | di
    index: int
    bit: int | None = None


def parse_address(text: str) -> Address:
    match = _ADDRESS.match(text.strip())
    if match is None:
        raise ValueError(f"{ADDRESS_EXPECTED}, got {text!r}")
    table, index, bit = match.group(1), int(match.group(2)), match.group(3)
    if index > 65535:
        raise ValueError(f"address {index} is beyond 65535")
    if bit is not None:
        if table in BIT_TABLES:
            raise ValueError(f"{table} addresses are single bits already; drop '.{bit}'")
        if int(bit) > 15:
            raise ValueError(f"bit {bit} is beyond 15 in {text!r}")
    return Address(table, index, None if bit is None else int(bit))


class ModbusTagConfig(TagConfig):
    address: str
    type: DataType | None = Field(
        default=None, description="bool for coils, discrete inputs and register bits; else uint16"
    )
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"
    length: int | None = Field(default=None, ge=1, le=250, description="string length in bytes")
    encoding: str = "utf-8"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    @model_validator(mode="after")
    def _type_fits_address(self) -> ModbusTagConfig:
        address = self.parsed_address
        kind = self.data_type
        if (address.table in BIT_TABLES or address.bit is not None) and kind != "bool":
            raise ValueError(f"type {kind!r} does not fit single-bit address {self.address!r}")
        if address.table not in BIT_TABLES and address.bit is None and kind == "bool":
            raise ValueError(f'type "bool" on a register needs a bit: "{self.address}.0"')
        if kind == "string" and self.length is None:
            raise ValueError('type "string" needs length (bytes)')
        if kind != "string" and self.length is not None:
            raise ValueError('length is only for type "string"')
        if address.index + self.register_count > 65536:
            raise ValueError(f"{self.address} with type {kind} runs past address 65535")
        return self

    @property
    def parsed_address(self) -> Address:
        return parse_address(self.address)

    def resample_method(self) -> str:
        """Bits are discrete: the wide output holds them rather than interpolating."""
        return self.resample or ("previous" if self.data_type == "bool" else "linear")

    @property
    def data_type(self) -> str:
        if self.type is not None:
            return self.type
        address = self.parsed_address
        return "bool" if address.table in BIT_TABLES or address.bit is not None else "uint16"

    @property
    def register_count(self) -> int:
        """Registers (or bits, in a bit table) this tag occupies."""
        kind = self.data_type
        if kind == "bool":
            return 1
        if kind == "string":
            return ((self.length or 0) + 1) // 2
        return REGISTER_TYPES[kind]


class ModbusSourceConfig(SourceConfig):
    protocol: Literal["modbus"] = "modbus"
    url: str = Field(
        description="modbus+tcp://host[:port] (port 502 when omitted), or modbus+rtu:///dev/tty..."
        " for Modbus RTU on a serial line"
    )
    unit_id: int = Field(default=1, ge=0, le=255)
    # the serial line of modbus+rtu; defaults as the Modbus serial line spec says (8E1)
    baudrate: int = Field(default=19200, gt=0)
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout: Duration = Field(default=1_000_000_000)
    max_gap: int = Field(
        default=16, ge=0, le=124, description="unused registers a block read may span"
    )
    max_registers: int = Field(default=125, ge=1, le=125)
    max_bits: int = Field(default=2000, ge=1, le=2000)
    tags: list[ModbusTagConfig] = Field(min_length=1)  # type: ignore[assignment]

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "modbus+rtu" and parts.path and not parts.netloc:
            return value
        if parts.scheme != "modbus+tcp" or not parts.hostname:
            raise ValueError(
                f'expected "modbus+tcp://host[:port]" or "modbus+rtu:///dev/<serial port>", '
                f"got {value!r}"
            )
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"invalid port in {value!r}") from None
        return value

    @model_validator(mode="after")
    def _serial_keys_need_rtu(self) -> ModbusSourceConfig:
        # a line setting on a TCP url is a mistake (a dumped config repeats the defaults)
        serial = [
            key
            for key in ("baudrate", "bytesize", "parity", "stopbits")
            if getattr(self, key) != type(self).model_fields[key].default
        ]
        if serial and not self.is_serial:
            raise ValueError(f"{', '.join(sorted(serial))}: for a modbus+rtu:// url only")
        return self

    @model_validator(mode="after")
    def _tags_fit_one_read(self) -> ModbusSourceConfig:
        for index, tag in enumerate(self.tags):
            if tag.register_count > self.max_registers:
                raise ValueError(
                    f"tags[{index}] ({tag.name!r}, {tag.data_type}) needs {tag.register_count} "
                    f"registers, more than max_registers = {self.max_registers}"
                )
        return self

    @property
    def is_serial(self) -> bool:
        return urlsplit(self.url).scheme == "modbus+rtu"

    @property
    def serial_port(self) -> str:
        return urlsplit(self.url).path

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 502
