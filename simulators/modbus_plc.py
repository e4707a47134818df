"""A Modbus TCP PLC of a CNC cell, served by pymodbus, with seeded signals and faults.

The register map (POINTS) covers every data type the driver supports in both word and
byte orders, scaled integers, register bits, a string, coils and discrete inputs; an
unmapped hole (hr 64-199) makes over-wide block reads fail as on real PLCs. Values are
refreshed from :class:`CncSignals` at a 10 ms PLC scan, so ``truth(name, t)`` says exactly
what any request at time ``t`` was served.

Faults for tests and demos: exception responses and timeouts with a seeded probability
(``exception_rate`` and ``timeout_rate`` may be changed while it runs), periodic
disconnects (``disconnect_every_s`` set to 0 while it runs stops them), slow answers
(``response_delay_s``), values held at anything a register can carry (``hold``, e.g. a
float32 NaN), and ``stop()``/``start()`` or ``restart(downtime_s)`` for a PLC that goes
away and comes back on the same port (the listener sets SO_REUSEADDR, as asyncio servers
do on POSIX, so the port is free again at once).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.signals import CncSignals

TABLE_SIZE = {"hr": 64, "ir": 8, "coil": 16, "di": 16}
ALARM_AREA = 200  # hr 200-207: mapped, but far from the main map
BULK_BASE = 1000  # hr 1000+: extra float32 tags for load tests
SEQUENCE_AREA = 400  # hr 400-401: uint32, the number of this request (1, 2, 3 ...)


@dataclass(frozen=True)
class Point:
    """One simulated tag: where it lives, how it is encoded, which signal it carries."""

    name: str
    address: str
    type: str
    signal: str
    unit: str | None = None
    scale: float = 1.0
    word_order: str = "big"
    byte_order: str = "big"
    length: int | None = None

    @property
    def table(self) -> str:
        return self.address.split(":")[0]

    @property
    def index(self) -> int:
        return int(self.address.split(":")[1].split(".")[0])

    @property
    def bit(self) -> int | None:
        _, _, bit = self.address.partition(".")
        return int(bit) if bit else None

    def toml(self, rate: str) -> str:
        lines = [
            "[[sources.tags]]",
            f'name = "{self.name}"',
            f'address = "{self.address}"',
            f'type = "{self.type}"',
            f'rate = "{rate}"',
        ]
        if self.unit:
            lines.append(f'unit = "{self.unit}"')
        if self.scale != 1.0:
            lines.append(f"scale = {self.scale}")
        if self.word_order != "big":
            lines.append(f'word_order = "{self.word_order}"')
        if self.byte_order != "big":
            lines.append(f'byte_order = "{self.byte_order}"')
        if self.length is not None:
            lines.append(f"length = {self.length}")
        return "\n".join(lines)


POINTS: tuple[Point, ...] = (
    Point("spindle_speed", "hr:0", "float32", "spindle_speed", "rpm"),
    Point("spindle_speed_cdab", "hr:2", "float32", "spindle_speed", "rpm", word_order="little"),
    Point("torque", "hr:4", "float32", "torque", "N.m"),
    Point("torque_badc", "hr:6", "float32", "torque", "N.m", byte_order="little"),
    Point("spindle_temp", "hr:8", "int16", "spindle_temp", "degC", scale=0.1),
    Point("coolant_temp", "hr:9", "uint16", "coolant_temp", "degC", scale=0.01),
    Point("part_count", "hr:10", "uint32", "part_count"),
    Point("part_count_cdab", "hr:12", "uint32", "part_count", word_order="little"),
    Point("position_x", "hr:14", "int32", "position_x", "um"),
    Point(
        "position_x_dcba",
        "hr:16",
        "int32",
        "position_x",
        "um",
        word_order="little",
        byte_order="little",
    ),
    Point("energy", "hr:18", "int64", "energy", "Wh"),
    Point("energy_cdab", "hr:22", "uint64", "energy", "Wh", word_order="little"),
    Point("feed_rate", "hr:26", "float64", "feed_rate", "mm/min"),
    Point("feed_rate_cdab", "hr:30", "float64", "feed_rate", "mm/min", word_order="little"),
    Point("status_word", "hr:34", "uint16", "status_word"),
    Point("running", "hr:34.0", "bool", "running"),
    Point("alarm", "hr:34.1", "bool", "alarm"),
    Point("door_open", "hr:34.2", "bool", "door_open"),
    Point("program", "hr:40", "string", "program", length=8),
    Point("alarm_code", f"hr:{ALARM_AREA}", "uint16", "alarm_code"),
    Point("vibration_rms", "ir:0", "float32", "vibration_rms", "mm/s"),
    Point("ambient_temp", "ir:2", "int16", "ambient_temp", "degC", scale=0.1),
    Point("spindle_on", "coil:0", "bool", "running"),
    Point("coolant_on", "coil:1", "bool", "coolant_on"),
    Point("alarm_active", "coil:2", "bool", "alarm"),
    Point("estop_ok", "di:0", "bool", "estop_ok"),
    Point("guard_closed", "di:1", "bool", "guard_closed"),
)
POINTS_BY_NAME = {point.name: point for point in POINTS}
_NUMPY = {
    "int16": ">i2",
    "uint16": ">u2",
    "int32": ">i4",
    "uint32": ">u4",
    "int64": ">i8",
    "uint64": ">u8",
    "float32": ">f4",
    "float64": ">f8",
}


def raw_value(point: Point, value: np.ndarray) -> np.ndarray:
    """What the PLC stores for an engineering value: scaled and cast to the point's type."""
    if point.type in ("float32", "float64"):
        return np.asarray(value / point.scale).astype(_NUMPY[point.type])
    return np.round(np.asarray(value) / point.scale).astype(_NUMPY[point.type])


def encode_words(point: Point, value: float) -> list[int]:
    """Registers of one value, in the point's word and byte order."""
    raw = raw_value(point, np.array([value]))
    words = raw.view(">u2").astype(np.uint16)
    if point.byte_order == "little":
        words = ((words >> 8) | (words << 8)).astype(np.uint16)
    if point.word_order == "little":
        words = words[::-1]
    return [int(w) for w in words]


class ModbusPLCSimulator:
    """The simulated PLC. ``await start(host, port)`` returns the bound port (0 = any)."""

    def __init__(
        self,
        seed: int = 0,
        *,
        unit_id: int = 1,
        scan_ns: int = 10_000_000,
        bulk_tags: int = 0,
        exception_rate: float = 0.0,
        timeout_rate: float = 0.0,
        timeout_s: float = 5.0,
        disconnect_every_s: float = 0.0,
        response_delay_s: float = 0.0,
    ) -> None:
        self.signals = CncSignals(seed, scan_ns)
        self.unit_id = unit_id
        self.bulk_tags = bulk_tags
        self.exception_rate = exception_rate
        self.timeout_rate = timeout_rate
        self.timeout_s = timeout_s
        self.disconnect_every_s = disconnect_every_s
        # every answer this much after its values were taken: a slow device (the values,
        # a sequence number among them, count as served before the answer leaves)
        self.response_delay_s = response_delay_s
        self._answering = asyncio.Lock()
        self._rng = random.Random(seed)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._images: dict[str, tuple[int, list[int]]] = {}
        self._disconnector: asyncio.Task[None] | None = None
        self.requests = 0
        self.exceptions = 0  # requests answered with an injected exception
        self.served_sequence: list[int] = []  # numbers served from SEQUENCE_AREA
        self.write_attempts = 0
        self.host = "127.0.0.1"
        self.port = 0
        self.held: dict[str, float] = {}  # point name -> value served instead of its signal

    # -- truth --------------------------------------------------------------------------

    @property
    def answering(self) -> bool:
        """A request is being answered with ``response_delay_s``: one is in flight."""
        return self._answering.locked()

    def hold(self, name: str, value: float | None) -> None:
        """Serve ``value`` for a register point from now on (None: its signal again); for
        float points any float, NaN and infinities included. ``truth`` ignores it."""
        if value is None:
            self.held.pop(name, None)
        else:
            self.held[name] = value
        self._images.clear()

    def truth(self, name: str, t_ns: np.ndarray | int) -> np.ndarray:
        """The engineering value a request at ``t_ns`` was served, as the agent decodes it."""
        point = POINTS_BY_NAME[name]
        scan = self.signals.scan_time(np.atleast_1d(np.asarray(t_ns, np.int64)))
        if point.type == "string":
            return np.full(scan.shape, np.nan)
        value = self.signals.functions[point.signal](scan)
        if point.type == "bool":
            return value
        return raw_value(point, value).astype(np.float64) * point.scale

    def bulk_truth(self, t_ns: int) -> np.ndarray:
        """Values of the bulk tags served at ``t_ns`` (float32 precision)."""
        scan = self.signals.scan_of(t_ns)
        return self.signals.bulk(scan, self.bulk_tags).astype(np.float32).astype(np.float64)

    # -- register images -------------------------------------------------------------------

    def _image(self, table: str, scan: int) -> list[int]:
        cached = self._images.get(table)
        if cached is not None and cached[0] == scan:
            return cached[1]
        t = np.array([scan], np.int64)
        if table in ("coil", "di"):
            bits = np.zeros(TABLE_SIZE[table], np.uint16)
            for point in POINTS:
                if point.table == table:
                    bits[point.index] = int(self.signals.functions[point.signal](t)[0])
            words = [
                int(w) for w in (bits.reshape(-1, 16) << np.arange(16, dtype=np.uint16)).sum(1)
            ]
        else:
            size = TABLE_SIZE[table]
            registers = np.zeros(size, np.uint16)
            for point in POINTS:
                if point.table != table or point.bit is not None or point.index >= size:
                    continue
                if point.type == "string":
                    text = self.signals.program.encode().ljust(point.length or 0, b"\0")
                    registers[point.index : point.index + len(text) // 2] = np.frombuffer(
                        text, ">u2"
                    )
                    continue
                value = self.held.get(point.name)
                if value is None:
                    value = float(self.signals.functions[point.signal](t)[0])
                words = encode_words(point, value)
                registers[point.index : point.index + len(words)] = words
            words = registers.tolist()
        self._images[table] = (scan, words)
        return words

    def _alarm_image(self, scan: int) -> list[int]:
        point = POINTS_BY_NAME["alarm_code"]
        value = float(self.signals.functions[point.signal](np.array([scan], np.int64))[0])
        return encode_words(point, value) + [0] * 7

    def _sequence_image(self, scan: int) -> list[int]:
        """Every read gets a fresh number: a store can be checked sample by sample
        (nothing twice, nothing missing) against ``served_sequence``."""
        return [self.requests >> 16, self.requests & 0xFFFF]

    def _bulk_image(self, scan: int) -> list[int]:
        cached = self._images.get("bulk")
        if cached is not None and cached[0] == scan:
            return cached[1]
        values = self.signals.bulk(scan, self.bulk_tags).astype(">f4")
        words = values.view(">u2").astype(np.uint16).tolist()
        self._images["bulk"] = (scan, words)
        return words

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: Any,
    ) -> ExcCodes | None:
        """Called by pymodbus before each request is served: refresh, or inject a fault.
        With ``response_delay_s`` one request is answered at a time: pymodbus reads the
        reply from the device's registers when this returns, so a second request filling
        them during the first one's delay would answer both with its own values."""
        if not self.response_delay_s:
            return await self._serve(
                function_code, start_address, address, count, registers, set_values
            )
        async with self._answering:
            result = await self._serve(
                function_code, start_address, address, count, registers, set_values
            )
            await asyncio.sleep(self.response_delay_s)
            return result

    async def _serve(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: Any,
    ) -> ExcCodes | None:
        self.requests += 1
        if set_values is not None or function_code not in (1, 2, 3, 4):
            self.write_attempts += 1  # the agent must never write; tests assert this stays 0
            return ExcCodes.ILLEGAL_FUNCTION
        if self.exception_rate and self._rng.random() < self.exception_rate:
            self.exceptions += 1
            return ExcCodes.DEVICE_FAILURE
        if self.timeout_rate and self._rng.random() < self.timeout_rate:
            arrived = self.requests
            await asyncio.sleep(self.timeout_s)
            if self.requests != arrived:
                # The client gave up and asked again. pymodbus's server would label this late
                # reply with the newer request's transaction id (it reads the connection's
                # last request after this await): another request's values under that id,
                # which no device sends. So this reply is dropped, a timeout pure and simple.
                raise NoSuchIdException("late reply dropped")
        scan = self.signals.scan_of(time.time_ns())
        table = {1: "coil", 2: "di", 3: "hr", 4: "ir"}[function_code]
        areas: list[tuple[int, Callable[[int], list[int]]]] = [
            (0, lambda scan: self._image(table, scan))
        ]
        if table == "hr":
            areas.append((ALARM_AREA, self._alarm_image))
            areas.append((SEQUENCE_AREA, self._sequence_image))
            if self.bulk_tags:
                areas.append((BULK_BASE, self._bulk_image))
        if table in ("coil", "di"):  # bit tables are packed 16 to a register
            address, count = address // 16, (address % 16 + count + 15) // 16
        for base, image_of in areas:
            image = image_of(scan)
            low, high = max(address, base), min(address + count, base + len(image))
            if low < high:  # copy only what the request reads: bulk areas are large
                registers[low - start_address : high - start_address] = image[
                    low - base : high - base
                ]
                if base == SEQUENCE_AREA:
                    self.served_sequence.append(self.requests)
        return None

    def _device(self) -> SimDevice:
        holding = [
            SimData(0, count=TABLE_SIZE["hr"], values=0, datatype=DataType.REGISTERS),
            SimData(ALARM_AREA, count=8, values=0, datatype=DataType.REGISTERS),
            SimData(SEQUENCE_AREA, count=2, values=0, datatype=DataType.REGISTERS),
        ]
        if self.bulk_tags:
            holding.append(
                SimData(BULK_BASE, count=2 * self.bulk_tags, values=0, datatype=DataType.REGISTERS)
            )
        bits = [False] * 16
        return SimDevice(
            id=self.unit_id,
            simdata=(
                [SimData(0, values=bits, datatype=DataType.BITS)],
                [SimData(0, values=bits, datatype=DataType.BITS)],
                holding,
                [SimData(0, count=TABLE_SIZE["ir"], values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._on_request,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._images.clear()
        # unknown unit ids go unanswered, as on a serial bus (and a dropped late reply too)
        server = ModbusTcpServer(self._device(), address=(host, port), ignore_missing_devices=True)
        await server.serve_forever(background=True)
        self._server = server
        listener: Any = server.transport
        self.host = host
        self.port = int(listener.sockets[0].getsockname()[1])
        if self.disconnect_every_s:
            self._disconnector = asyncio.create_task(self._disconnect_periodically())
        return self.port

    async def start_serial(self, port: str, baudrate: int = 19200, parity: str = "E") -> None:
        """Serve Modbus RTU on a serial port (8 data bits, 1 stop bit), e.g. one end of a
        pseudo-terminal pair, instead of TCP."""
        self._images.clear()
        server = ModbusSerialServer(
            self._device(),
            framer=FramerType.RTU,
            port=port,
            baudrate=baudrate,
            parity=parity,
            ignore_missing_devices=True,
        )
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        """Close the listener and every client connection, like a PLC losing power."""
        if self._disconnector is not None:
            self._disconnector.cancel()
            self._disconnector = None
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def restart(self, downtime_s: float = 0.0) -> None:
        """Power off, stay off ``downtime_s``, and listen again on the same host and port."""
        await self.stop()
        if downtime_s:
            await asyncio.sleep(downtime_s)
        await self.start(self.host, self.port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_connections(self) -> int:
        """Close the open client connections, keep listening; returns how many."""
        if self._server is None:
            return 0
        connections = list(self._server.active_connections.values())
        for connection in connections:
            connection.close()
        return len(connections)

    async def _disconnect_periodically(self) -> None:
        while self.disconnect_every_s:
            await asyncio.sleep(self.disconnect_every_s)
            if self.disconnect_every_s:
                self.drop_connections()

    def agent_config(
        self,
        rate: str = "100ms",
        *,
        source: str = "plc1",
        points: tuple[Point, ...] = POINTS,
        extra: str = "",
        url: str = "",
    ) -> str:
        """A [[sources]] TOML block that reads ``points`` from this simulator (over TCP,
        unless ``url`` names another way to it, e.g. the serial line it serves RTU on)."""
        url = url or f"modbus+tcp://127.0.0.1:{self.port}"
        header = (
            f'[[sources]]\nname = "{source}"\nprotocol = "modbus"\n'
            f'url = "{url}"\nunit_id = {self.unit_id}\n{extra}'
        )
        return header + "\n" + "\n\n".join(point.toml(rate) for point in points) + "\n"
