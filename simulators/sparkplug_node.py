"""A Sparkplug B edge node with two devices, seeded values, and the faults a host must survive.

Edge node ``<group>/<node>`` (default ``Plant1/Line1``) with devices ``Spindle`` and
``Coolant``: values are pure functions of (seed, tick time) from the CNC signals, so
``truth(device, metric, t)`` is exactly what was published for the tick at ``t``. Every
``period_ns`` tick (absolute grid) it publishes one DDATA per device, all metrics by alias,
each with the tick's timestamp, and an NDATA with the node's uptime. It connects with an
NDEATH will (QoS 1) carrying ``bdSeq``, which grows by one per connection, then publishes
NBIRTH and the DBIRTHs, as the specification orders.

Data types covered: Double, Float, Boolean, String, UInt32, Int16 (negative values),
UInt64, DateTime, a FloatArray block, and a DataSet (unsupported by the agent: in the
birth only). Faults, each counted in ``faults`` under the reason the agent reports:

- ``gap_every=N``: every N-th data message skips a sequence number (``sequence_gap``);
- ``ghost_device=True``: a device ``Ghost`` sends DDATA without ever a DBIRTH (``no_birth``);
- ``malformed_every=N``: every N-th tick also publishes bytes that are not protobuf
  (``malformed``);
- ``rebirth_every_ns``: a rebirth (NBIRTH and DBIRTHs again) with changed aliases;
- :meth:`rebirth`, :meth:`device_death`, :meth:`kill` (connection dropped: the broker
  publishes the will) and :meth:`stop` (NDEATH, then a clean disconnect) on demand.

Like a conformant node it obeys NCMD ``Node Control/Rebirth``: births again at once.

Publishes at QoS ``qos`` (1 by default; the specification says 0 for data, which a broker
does not queue for an absent subscriber, see protocols/sparkplug/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import unittest
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.acquisition.scheduler import ticks
from protocols.mqtt.aio import AsyncMqttClient
from protocols.sparkplug.schema import BD_SEQ, REBIRTH, DataType, payload_class, topic
from protocols.sparkplug.values import pack_array
from simulators.signals import NS, CncSignals

ARRAY_LENGTH = 8
ARRAY_INTERVAL_NS = 10_000_000  # the FloatArray's elements are 10 ms apart
_SERVICE_MS = 1_767_225_600_000  # 2026-01-01, the DateTime metric's value
_STOP_ACK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SimMetric:
    name: str
    datatype: DataType
    unit: str | None
    signal: Callable[[CncSignals, np.ndarray], np.ndarray]


def _array(signals: CncSignals, t: np.ndarray) -> np.ndarray:
    offsets = np.arange(ARRAY_LENGTH, dtype=np.int64) * ARRAY_INTERVAL_NS
    return signals.vibration(np.asarray(t, np.int64) + offsets)


DEVICES: dict[str, tuple[SimMetric, ...]] = {
    "Spindle": (
        SimMetric("Speed", DataType.Double, "rpm", lambda s, t: s.spindle_speed(t)),
        SimMetric("Load", DataType.Float, "%", lambda s, t: s.torque(t)),
        SimMetric("Running", DataType.Boolean, None, lambda s, t: s.running(t)),
        SimMetric("Parts", DataType.UInt32, None, lambda s, t: s.part_count(t)),
        SimMetric("Temperature", DataType.Int16, "degC", lambda s, t: s.spindle_temp(t) - 45),
        SimMetric("Vibration", DataType.FloatArray, "mm/s", _array),
        SimMetric("State", DataType.String, None, lambda s, t: s.running(t)),
    ),
    "Coolant": (
        SimMetric("Temperature", DataType.Double, "degC", lambda s, t: s.coolant_temp(t)),
        SimMetric("Flow", DataType.Float, "l/min", lambda s, t: s.feed_rate(t) / 100),
        SimMetric("LastService", DataType.DateTime, None, lambda s, t: np.full_like(t, 0)),
        SimMetric("Recipe", DataType.DataSet, None, lambda s, t: np.full_like(t, 0)),
    ),
}
NODE_METRICS = (
    SimMetric("Uptime", DataType.UInt64, "s", lambda s, t: np.asarray(t) // NS % 100_000),
)
STATES = ("IDLE", "RUN")


def expected(device: str, metric: SimMetric, signals: CncSignals, t_ns: int) -> Any:
    """What the simulator publishes for a metric at a tick, as the agent should store it:
    a float, a string (State), or an array of floats (Vibration)."""
    raw = metric.signal(signals, np.asarray(t_ns, np.int64))
    if metric.datatype == DataType.String:
        return STATES[int(raw)]
    if metric.datatype == DataType.FloatArray:
        return raw.astype(np.float32).astype(np.float64)
    if metric.datatype == DataType.Float:
        return float(np.float32(raw))
    if metric.datatype in (DataType.Int16, DataType.UInt32, DataType.UInt64):
        return float(int(raw))
    if metric.datatype == DataType.DateTime:
        return float(_SERVICE_MS)
    return float(raw)


class SparkplugNodeSimulator:
    """See module doc; ``faults``, ``published`` and ``ticks`` for tests."""

    def __init__(
        self,
        seed: int = 0,
        *,
        group: str = "Plant1",
        node: str = "Line1",
        devices: Sequence[str] = tuple(DEVICES),
        period_ns: int = 100_000_000,
        qos: int = 1,
        mqtt_version: str = "5",
        gap_every: int = 0,
        ghost_device: bool = False,
        malformed_every: int = 0,
        rebirth_every_ns: int = 0,
    ) -> None:
        self.signals = CncSignals(seed)
        self.seed = seed
        self.group = group
        self.node = node
        self.devices = [d for d in devices if d in DEVICES]
        self.period_ns = period_ns
        self.qos = qos
        self.mqtt_version = mqtt_version
        self.gap_every = gap_every
        self.ghost_device = ghost_device
        self.malformed_every = malformed_every
        self.rebirth_every_ns = rebirth_every_ns
        self.payload = payload_class()
        self.bdseq = -1  # incremented at every connect
        self.seq = 0
        self.alias_base = 0  # a rebirth with changed aliases moves them all
        self.faults: Counter[str] = Counter()
        self.published = 0
        self.births = 0  # NBIRTHs published
        self.rebirth_requests = 0  # NCMD Rebirth commands obeyed
        self.ticks: list[int] = []  # tick times whose data was published, in order
        self.dead: set[str] = set()  # devices after device_death()
        self._data_messages = 0
        self._url = ""
        self._connection: AsyncMqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: list[mqtt.MQTTMessageInfo] = []

    # -- truth ----------------------------------------------------------------------------------

    def truth(self, device: str, metric: str, t_ns: int) -> Any:
        spec = next(m for m in DEVICES[device] if m.name == metric)
        return expected(device, spec, self.signals, t_ns)

    def agent_config(self, name: str = "line1", url: str = "", extra: str = "") -> str:
        """A ``[[sources]]`` table mapping every supported metric explicitly."""
        lines = [
            "[[sources]]",
            f'name = "{name}"',
            'protocol = "sparkplug"',
            f'url = "{url or self._url}"',
            f'group = "{self.group}"',
            f'edge_node = "{self.node}"',
            f'mqtt_version = "{self.mqtt_version}"',
            extra,
        ]
        for device in self.devices:
            for metric in DEVICES[device]:
                if metric.datatype == DataType.DataSet:
                    continue
                lines += [
                    "  [[sources.tags]]",
                    f'  name = "{device.lower()}_{metric.name.lower()}"',
                    f'  metric = "{metric.name}"',
                    f'  device = "{device}"',
                ]
                if metric.datatype == DataType.FloatArray:
                    lines.append(f'  sample_interval = "{ARRAY_INTERVAL_NS // 1_000_000}ms"')
        return "\n".join(lines) + "\n"

    # -- payloads -------------------------------------------------------------------------------

    def _alias(self, device: str | None, index: int) -> int:
        """Aliases unique across the node: node metrics 1.., device d's 100 * (d + 1).."""
        block = 0 if device is None else 100 * (self.devices.index(device) + 1)
        return self.alias_base + block + index + 1

    def _fill(self, metric: Any, spec: SimMetric, t_ns: int) -> None:
        value = expected("", spec, self.signals, t_ns)
        kind = spec.datatype
        if kind == DataType.Double:
            metric.double_value = value
        elif kind == DataType.Float:
            metric.float_value = value
        elif kind == DataType.Boolean:
            metric.boolean_value = bool(value)
        elif kind == DataType.String:
            metric.string_value = value
        elif kind in (DataType.UInt32,):
            metric.int_value = int(value)
        elif kind == DataType.Int16:  # two's complement in 32 bits, as Tahu's clients send
            metric.int_value = int(value) & 0xFFFFFFFF
        elif kind in (DataType.UInt64, DataType.DateTime):
            metric.long_value = int(value)
        elif kind == DataType.FloatArray:
            metric.bytes_value = pack_array(DataType.FloatArray, np.asarray(value))
        elif kind == DataType.DataSet:
            metric.dataset_value.num_of_columns = 1
            metric.dataset_value.columns.append("step")
            metric.dataset_value.types.append(int(DataType.Int32))

    def _payload(self, device: str | None, t_ns: int, birth: bool) -> Any:
        payload = self.payload(timestamp=t_ns // 1_000_000)
        specs = NODE_METRICS if device is None else DEVICES[device]
        for index, spec in enumerate(specs):
            metric = payload.metrics.add()
            metric.alias = self._alias(device, index)
            metric.timestamp = t_ns // 1_000_000
            if birth:
                metric.name = spec.name
                metric.datatype = int(spec.datatype)
                if spec.unit is not None:
                    metric.properties.keys.append("engUnit")
                    unit = metric.properties.values.add()
                    unit.type = int(DataType.String)
                    unit.string_value = spec.unit
            elif spec.datatype == DataType.DataSet:
                payload.metrics.pop()
                continue
            self._fill(metric, spec, t_ns)
        if birth and device is None:
            for name, datatype, value in ((BD_SEQ, DataType.UInt64, self.bdseq),):
                metric = payload.metrics.add(name=name, datatype=int(datatype))
                metric.long_value = value
            control = payload.metrics.add(name=REBIRTH, datatype=int(DataType.Boolean))
            control.boolean_value = False
        return payload

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = (self.seq + 1) % 256
        return seq

    def _send(self, message: str, device: str | None, payload: Any, qos: int | None = None) -> None:
        if message != "NDEATH":
            payload.seq = self._next_seq()
        self.publish(
            topic(self.group, message, self.node, device), payload.SerializeToString(), qos
        )

    def publish(self, name: str, data: bytes, qos: int | None = None) -> None:
        assert self._connection is not None, "start() first"
        info = self._connection.client.publish(name, data, self.qos if qos is None else qos)
        self._in_flight.append(info)
        self.published += 1

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, url: str) -> None:
        self._url = url
        await self._connect()
        self._task = asyncio.create_task(self._publish_forever(), name="sparkplug-node-simulator")

    async def _connect(self) -> None:
        self.bdseq = (self.bdseq + 1) % 256
        parts = urlsplit(self._url)
        v5 = self.mqtt_version == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sparkplug-sim-{self.node}-{id(self)}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        death = self.payload(timestamp=time.time_ns() // 1_000_000)
        death.metrics.add(name=BD_SEQ, datatype=int(DataType.UInt64), long_value=self.bdseq)
        client.will_set(topic(self.group, "NDEATH", self.node), death.SerializeToString(), 1)
        client.on_message = self._on_command
        connection = AsyncMqttClient(client)
        host, port = parts.hostname or "127.0.0.1", parts.port or 1883
        await connection.connect(host, port, 30, 10.0, True if v5 else None)
        client.subscribe(topic(self.group, "NCMD", self.node), 0)
        self._connection = connection
        self._birth(time.time_ns())

    def _on_command(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """NCMD Node Control/Rebirth = true: born again (same aliases), as a node must."""
        try:
            command = self.payload.FromString(bytes(message.payload))
        except Exception:
            return
        if any(m.name == REBIRTH and m.boolean_value for m in command.metrics):
            self.rebirth_requests += 1
            self.dead.clear()
            self._birth(time.time_ns())

    def _birth(self, now_ns: int) -> None:
        self.seq = 0
        self._send("NBIRTH", None, self._payload(None, now_ns, birth=True))
        self.births += 1
        for device in self.devices:
            if device not in self.dead:
                self._send("DBIRTH", device, self._payload(device, now_ns, birth=True))

    async def rebirth(self, change_aliases: bool = True) -> None:
        """NBIRTH and DBIRTHs again (as on a Rebirth command), aliases moved if asked."""
        if change_aliases:
            self.alias_base += 1000
        self.dead.clear()
        self._birth(time.time_ns())

    async def device_death(self, device: str) -> None:
        self.dead.add(device)
        self._send("DDEATH", device, self.payload(timestamp=time.time_ns() // 1_000_000))

    async def kill(self) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the NDEATH will."""
        await self._stop_task()
        if self._connection is not None:
            sock = self._connection.client.socket()
            if sock is not None:
                sock.close()  # paho sees a lost connection, the broker a vanished client
            await self._connection.close()
            self._connection = None

    async def reconnect(self) -> None:
        """After kill(): a new session (bdSeq + 1) with births, publishing again."""
        await self._connect()
        self._task = asyncio.create_task(self._publish_forever(), name="sparkplug-node-simulator")

    async def stop(self) -> None:
        """NDEATH, wait for the broker's acknowledgements, disconnect."""
        await self._stop_task()
        if self._connection is None:
            return
        death = self.payload(timestamp=time.time_ns() // 1_000_000)
        death.metrics.add(name=BD_SEQ, datatype=int(DataType.UInt64), long_value=self.bdseq)
        self._send("NDEATH", None, death, qos=1)
        deadline = asyncio.get_running_loop().time() + _STOP_ACK_TIMEOUT_S
        while self._still_in_flight() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await self._connection.close()
        self._connection = None

    async def _stop_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _still_in_flight(self) -> bool:
        self._in_flight = [info for info in self._in_flight if not info.is_published()]
        return bool(self._in_flight)

    async def _publish_forever(self) -> None:
        last_birth = time.time_ns()
        async for tick in ticks(self.period_ns):
            now = tick.due_wall_ns
            if self.rebirth_every_ns and now - last_birth >= self.rebirth_every_ns:
                last_birth = now
                await self.rebirth(change_aliases=True)
            self._tick(now)
            self._still_in_flight()

    def _tick(self, now: int) -> None:
        self._send("NDATA", None, self._payload(None, now, birth=False))
        for device in self.devices:
            if device in self.dead:
                continue
            self._data_messages += 1
            if self.gap_every and self._data_messages % self.gap_every == 0:
                self._next_seq()  # a message the host never sees
                self.faults["sequence_gap"] += 1
            self._send("DDATA", device, self._payload(device, now, birth=False))
        self.ticks.append(now)
        if self.ghost_device:
            ghost = self.payload(timestamp=now // 1_000_000)
            ghost.metrics.add(alias=9999, timestamp=now // 1_000_000, double_value=1.0)
            self._send("DDATA", "Ghost", ghost)
            self.faults["no_birth"] += 1
        if self.malformed_every and len(self.ticks) % self.malformed_every == 0:
            self.publish(topic(self.group, "DDATA", self.node, "Spindle"), b"\xff\xfe not protobuf")
            self.faults["malformed"] += 1


@contextlib.asynccontextmanager
async def conformance_peer() -> AsyncIterator[dict[str, Any]]:
    """A private broker with this simulator publishing, for the conformance suite (skipped
    where no MQTT broker is installed). Births are not retained, so the node is born again
    every 0.5 s: a source that subscribes after it started still gets data it can decode."""
    from simulators.mqtt_broker import broker_class, private_broker

    if broker_class() is None:
        raise unittest.SkipTest("no MQTT broker (mosquitto or amqtt) is installed")
    with tempfile.TemporaryDirectory(prefix="edge-agent-sparkplug-") as directory:
        async with private_broker(Path(directory)) as broker:
            version = broker.mqtt_version()
            simulator = SparkplugNodeSimulator(
                seed=1, mqtt_version=version, rebirth_every_ns=500_000_000
            )
            await simulator.start(broker.url)
            try:
                yield {"url": broker.url, "mqtt_version": version}
            finally:
                await simulator.stop()


def from_cli(
    seed: int, group: str, node: str, period_ns: int, qos: int, faults: str, mqtt_version: str
) -> SparkplugNodeSimulator:
    """The simulator of ``edge-agent simulate sparkplug``; ``faults`` is a comma list of
    ``gap=N`` (every N-th data message skips a seq), ``ghost`` (DDATA without a birth),
    ``malformed=N`` (every N-th tick, bytes that are not protobuf) and ``rebirth=10s``
    (born again with other aliases that often)."""
    from agent.config.durations import parse_duration

    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in faults.split(","))):
        key, _, value = item.partition("=")
        options[key] = value
    unknown = set(options) - {"gap", "ghost", "malformed", "rebirth"}
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}: gap=N, ghost, malformed=N, rebirth=S")
    return SparkplugNodeSimulator(
        seed,
        group=group,
        node=node,
        period_ns=period_ns,
        qos=qos,
        mqtt_version=mqtt_version,
        gap_every=int(options.get("gap") or 0),
        ghost_device="ghost" in options,
        malformed_every=int(options.get("malformed") or 0),
        rebirth_every_ns=parse_duration(options["rebirth"]) if options.get("rebirth") else 0,
    )
