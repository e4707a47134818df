"""A SCADA/DCS publisher of a boiler house over MQTT, with seeded values and payload faults.

Plant values (drum pressure, steam and feedwater flows, drum level, temperatures, valve
states) are pure functions of (seed, tick time), so ``truth(name, t)`` is exactly what was
published for the tick at ``t``. Every ``period_ns`` tick (absolute grid, like the agent's
scheduler) it publishes, per selected shape:

- ``plain``: ``<prefix>/plain/<tag>`` with ``71.25`` (no timestamp: receive time);
- ``json``: ``<prefix>/json/<area>``, ``{"ts": <epoch ms>, "values": {...}, "quality": "good"}``;
- ``pattern``: ``<prefix>/pattern/<area>/<tag>`` with ``{"v": 71.25, "t": "<ISO 8601, us>"}``.

Payload times are the publisher's clock: tick time + ``clock_offset_ns`` (skew), drifting by
``clock_drift_ppm`` from the simulator's construction.
``fault_rate`` replaces that share of messages (seeded) with a broken variant; ``faults``
counts them by the reason the agent's decoder must report, so a test can compare the two.
``burst`` > 1 holds ticks back and publishes them together, as a SCADA that flushes a buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import tempfile
import time
import unittest
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.acquisition.scheduler import ticks
from protocols.mqtt.aio import AsyncMqttClient
from simulators.signals import NS, noise, uniform

SHAPES = ("plain", "json", "pattern")
FAULTS = {
    "plain": ("malformed_json", "not_numeric", "oversized"),
    "json": (
        "malformed_json",
        "not_numeric",
        "missing_field",
        "bad_timestamp",
        "absurd_timestamp",
        "oversized",
    ),
    "pattern": ("malformed_json", "not_numeric", "missing_field", "absurd_timestamp"),
}
OVERSIZED_BYTES = 300 * 1024  # above the driver's default max_payload of 256 KiB
_ABSURD_NS = 30 * 86_400 * NS
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_STOP_ACK_TIMEOUT_S = 5.0  # stop() waits this long at most for the broker's acknowledgements


@dataclass(frozen=True)
class PlantTag:
    name: str
    area: str
    unit: str
    base: float
    swing: float  # amplitude of the slow sine
    period_s: float
    noise: float
    valve: bool = False


PLANT: tuple[PlantTag, ...] = (
    PlantTag("PT101", "boiler", "bar", 42.0, 1.5, 120.0, 0.05),
    PlantTag("TT101", "boiler", "degC", 254.0, 3.0, 300.0, 0.2),
    PlantTag("LT101", "boiler", "%", 50.0, 6.0, 90.0, 0.3),
    PlantTag("FT101", "boiler", "t/h", 38.0, 4.0, 150.0, 0.4),
    PlantTag("FT102", "boiler", "t/h", 38.5, 4.0, 150.0, 0.4),
    PlantTag("XV101", "boiler", "", 0.0, 0.0, 20.0, 0.0, valve=True),
    PlantTag("TT201", "cooling", "degC", 28.0, 2.0, 600.0, 0.1),
    PlantTag("FT201", "cooling", "m3/h", 310.0, 25.0, 240.0, 1.5),
    PlantTag("LT201", "cooling", "%", 72.0, 3.0, 400.0, 0.2),
    PlantTag("XV201", "cooling", "", 0.0, 0.0, 45.0, 0.0, valve=True),
)
PLANT_BY_NAME = {tag.name: tag for tag in PLANT}
AREAS = tuple(dict.fromkeys(tag.area for tag in PLANT))


def iso(ns: int) -> str:
    """ISO 8601 with microseconds and 'Z', as historians and SCADA exports write it."""
    stamp = _EPOCH + dt.timedelta(microseconds=ns // 1000)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PlantSignals:
    """Seeded plant values as pure functions of time, rounded to 3 decimals (valves 0/1)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def value(self, name: str, t_ns: int | np.ndarray) -> np.ndarray:
        tag = PLANT_BY_NAME[name]
        stream = 100 + PLANT.index(tag)
        t = np.atleast_1d(np.asarray(t_ns, np.int64))
        if tag.valve:  # a valve changes state at most once per period, seeded
            return (uniform(self.seed, stream, t // int(tag.period_s * NS)) < 0.5).astype(float)
        seconds = (t % (86_400 * NS)) / NS
        slow = tag.swing * np.sin(2 * np.pi * seconds / tag.period_s + self.seed)
        jitter = tag.noise * noise(self.seed, stream, t // (NS // 1000))
        return np.round(tag.base + slow + jitter, 3)

    def values(self, t_ns: int, names: Sequence[str]) -> dict[str, float]:
        return {name: float(self.value(name, t_ns)[0]) for name in names}


async def connect_publisher(
    url: str, client_id: str = "", mqtt_version: str = "5"
) -> AsyncMqttClient:
    """A connected paho publisher on the running loop (plain MQTT, clean session);
    ``mqtt_version`` "3.1.1" for a broker that speaks no MQTT 5."""
    parts = urlsplit(url)
    v5 = mqtt_version == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    connection = AsyncMqttClient(client)
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    await connection.connect(host, port, 30, 10.0, True if v5 else None)
    return connection


class MqttScadaSimulator:
    """Publishes the plant to a broker; ``truth``, ``published`` and ``faults`` for tests."""

    def __init__(
        self,
        seed: int = 0,
        *,
        prefix: str = "plant",
        shapes: Sequence[str] = SHAPES,
        period_ns: int = 100_000_000,
        qos: int = 1,
        clock_offset_ns: int = 0,
        clock_drift_ppm: float = 0.0,
        fault_rate: float = 0.0,
        burst: int = 1,
        epoch_unit: str = "ms",
        mqtt_version: str = "5",
    ) -> None:
        unknown = set(shapes) - set(SHAPES)
        if unknown:
            raise ValueError(f"unknown payload shapes {sorted(unknown)}; known: {SHAPES}")
        self.signals = PlantSignals(seed)
        self.seed = seed
        self.prefix = prefix
        self.shapes = tuple(shapes)
        self.period_ns = period_ns
        self.qos = qos
        self.clock_offset_ns = clock_offset_ns
        self.clock_drift_ppm = clock_drift_ppm
        self.clock_epoch_ns = time.time_ns()
        self.fault_rate = fault_rate
        self.burst = max(1, burst)
        self.epoch_scale = {"s": NS, "ms": 1_000_000, "us": 1000, "ns": 1}[epoch_unit]
        self.mqtt_version = mqtt_version  # of its publisher and of agent_config's sources
        self.published = 0  # messages handed to the broker connection
        self.ticks: list[int] = []  # true tick times published, in order
        self.faults: Counter[str] = Counter()
        self._messages = 0  # counter keying the seeded fault draws
        self._connection: AsyncMqttClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: list[mqtt.MQTTMessageInfo] = []  # QoS 1/2 not acknowledged yet

    # -- truth -----------------------------------------------------------------------------

    def truth(self, name: str, true_ns: int | np.ndarray) -> np.ndarray:
        return self.signals.value(name, true_ns)

    def publisher_time(self, true_ns: int) -> int:
        """The publisher's clock at a true instant: skewed, and drifting from construction."""
        drift = round(self.clock_drift_ppm * 1e-6 * (true_ns - self.clock_epoch_ns))
        return true_ns + self.clock_offset_ns + drift

    def agent_config(self, name: str = "scada", url: str = "", extra: str = "") -> str:
        """``[[sources]]`` TOML for every shape this simulator publishes (one source each)."""
        blocks = []
        for shape in self.shapes:
            tags = "".join(
                f'  [[sources.tags]]\n  name = "{tag.name}"\n'
                + (f'  topic = "{self.prefix}/json/{tag.area}"\n' if shape == "json" else "")
                + (f'  unit = "{tag.unit}"\n' if tag.unit else "")
                for tag in PLANT
            )
            keys = {
                "plain": f'topic = "{self.prefix}/plain/{{tag}}"\n',
                "json": 'value = "$.values.{tag}"\ntimestamp = "$.ts"\nquality = "$.quality"\n',
                "pattern": (
                    f'topic = "{self.prefix}/pattern/{{area}}/{{tag}}"\n'
                    'value = "$.v"\ntimestamp = "$.t"\n'
                ),
            }[shape]
            blocks.append(
                f'[[sources]]\nname = "{name}_{shape}"\nprotocol = "mqtt"\nurl = "{url}"\n'
                f'client_id = "{name}-{shape}-{self.seed}"\n'
                f'mqtt_version = "{self.mqtt_version}"\n{keys}{extra}\n{tags}\n'
            )
        return "\n".join(blocks)

    # -- messages ---------------------------------------------------------------------------

    def snapshot(self, true_ns: int) -> dict[str, float]:
        """Every plant value at a tick (about a millisecond of numpy)."""
        return self.signals.values(true_ns, [tag.name for tag in PLANT])

    def messages(
        self, true_ns: int, values: dict[str, float] | None = None
    ) -> list[tuple[str, bytes]]:
        """The (topic, payload) pairs of one tick, faults applied; ``values`` is the tick's
        :meth:`snapshot` if it was taken already."""
        stamp = self.publisher_time(true_ns)
        values = self.snapshot(true_ns) if values is None else values
        out: list[tuple[str, bytes]] = []
        for shape in self.shapes:
            if shape == "plain":
                for tag in PLANT:
                    topic = f"{self.prefix}/plain/{tag.name}"
                    out.append(self._message(shape, topic, values[tag.name]))
            elif shape == "json":
                for area in AREAS:
                    document = {
                        "ts": stamp // self.epoch_scale,
                        "values": {tag.name: values[tag.name] for tag in PLANT if tag.area == area},
                        "quality": "good",
                    }
                    out.append(self._message(shape, f"{self.prefix}/json/{area}", document))
            else:
                for tag in PLANT:
                    document = {"v": values[tag.name], "t": iso(stamp)}
                    topic = f"{self.prefix}/pattern/{tag.area}/{tag.name}"
                    out.append(self._message(shape, topic, document))
        return out

    def _message(self, shape: str, topic: str, document: Any) -> tuple[str, bytes]:
        self._messages += 1
        counter = np.array([self._messages])
        if self.fault_rate <= 0 or uniform(self.seed, 7, counter)[0] >= self.fault_rate:
            return topic, json.dumps(document).encode()
        kinds = FAULTS[shape]
        kind = kinds[int(uniform(self.seed, 8, counter)[0] * len(kinds))]
        self.faults[kind] += 1
        return topic, broken(shape, document, kind, self.epoch_scale)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, url: str) -> None:
        client_id = f"scada-sim-{self.seed}-{id(self)}"
        self._connection = await connect_publisher(url, client_id, self.mqtt_version)
        self._task = asyncio.create_task(self._publish_forever(), name="mqtt-scada-simulator")

    async def stop(self) -> None:
        """Stop publishing; disconnect once the broker acknowledged what was published:
        amqtt drops a leaving client's messages it has not acknowledged yet."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        deadline = asyncio.get_running_loop().time() + _STOP_ACK_TIMEOUT_S
        # paho marks each message's info when its PUBACK/PUBCOMP arrives: nothing to await
        while self._still_in_flight() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _publish_forever(self) -> None:
        """Publish every tick when it is due. Its values are computed while waiting for it,
        so its messages leave as soon as the tick's instant comes, like a device's that
        samples and sends: computing them at the tick would hold every payload a
        millisecond behind the time it carries, a delay no clock model can tell apart from
        the publisher's clock offset."""
        held: list[tuple[int, dict[str, float] | None]] = []
        upcoming: tuple[int, dict[str, float]] | None = None
        async for tick in ticks(self.period_ns):
            due = tick.due_wall_ns
            # computed ahead unless ticks were skipped (an overrun) since
            ready = upcoming[1] if upcoming is not None and upcoming[0] == due else None
            held.append((due, ready))
            if len(held) >= self.burst:
                for true_ns, values in held:
                    for topic, payload in self.messages(true_ns, values):
                        self.publish(topic, payload)
                    self.ticks.append(true_ns)
                held.clear()
                self._still_in_flight()  # keeps the list to what the broker has not acked yet
            following = due + self.period_ns
            upcoming = (following, self.snapshot(following))

    def _still_in_flight(self) -> bool:
        """Forget the messages the broker acknowledged; whether any are left."""
        self._in_flight = [info for info in self._in_flight if not info.is_published()]
        return bool(self._in_flight)

    def publish(self, topic: str, payload: bytes, qos: int | None = None) -> None:
        assert self._connection is not None, "start() first"
        info = self._connection.client.publish(topic, payload, self.qos if qos is None else qos)
        self._in_flight.append(info)
        self.published += 1


def broken(shape: str, document: Any, kind: str, epoch_scale: int = 1_000_000) -> bytes:
    """The payload of ``document`` broken so the agent must report ``kind`` exactly once
    (``epoch_scale``: ns per unit of the document's epoch "ts")."""
    if kind == "malformed_json":
        text = json.dumps(document)
        return text[: max(1, len(text) // 2)].encode() + b"\x00{"
    if kind == "oversized":
        return json.dumps(document).encode() + b" " * OVERSIZED_BYTES
    if shape == "plain":  # not_numeric: valid JSON, but a string
        return b'"n/a"'
    document = json.loads(json.dumps(document))
    values = document.get("values")
    if kind == "not_numeric":
        if values is not None:
            values[next(iter(values))] = "n/a"
        else:
            document["v"] = "n/a"
    elif kind == "missing_field":
        if values is not None:
            del values[next(iter(values))]
        else:
            del document["v"]
    elif kind == "bad_timestamp":
        document["ts"] = "yesterday"
    elif kind == "absurd_timestamp":
        if "ts" in document:
            document["ts"] += _ABSURD_NS // epoch_scale
        else:
            document["t"] = iso(time.time_ns() + _ABSURD_NS)
    return json.dumps(document).encode()


@contextlib.asynccontextmanager
async def conformance_peer() -> AsyncIterator[dict[str, Any]]:
    """A private broker with this simulator publishing, for the conformance suite.

    Without a broker (neither mosquitto nor amqtt installed) the case is skipped
    (unittest.SkipTest, which pytest and unittest both honour) rather than failed: the
    other drivers' cases still run.
    """
    from simulators.mqtt_broker import broker_class, private_broker

    if broker_class() is None:
        raise unittest.SkipTest("no MQTT broker (mosquitto or amqtt) is installed")

    with tempfile.TemporaryDirectory(prefix="edge-agent-mqtt-") as directory:
        async with private_broker(Path(directory)) as broker:
            version = broker.mqtt_version()
            simulator = MqttScadaSimulator(seed=1, shapes=("json",), mqtt_version=version)
            await simulator.start(broker.url)
            try:
                yield {"url": broker.url, "mqtt_version": version}
            finally:
                await simulator.stop()
