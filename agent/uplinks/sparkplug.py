"""The ``sparkplug`` uplink: the gateway as a Sparkplug B edge node.

Edge node ``spBv1.0/<group>/.../<edge_node>`` (default: the gateway id), each source a
device, each tag (features included) a metric whose alias is its place in the agent's tag
table. Per connection, as the specification orders: an NDEATH will carrying ``bdSeq``
(one more than the last connection's, kept in ``<data_dir>/sparkplug/uplink-<name>.bdseq``),
then NBIRTH (``bdSeq``, ``Node Control/Rebirth``) and one DBIRTH per source listing every
tag: alias, data type (Double, String for text tags), and as properties ``engUnit`` and
each lineage entry (rate, scale, processing parameters, the device's own metric name...).
Births carry no values (``is_null``): the data follows. A reconnect, a Rebirth command
(NCMD) and a change of the tag table (a source naming a tag at run time) give new births;
a config change takes a restart, which is a reconnect.

Each batch becomes DDATA messages, one per source and up to ``max_metrics`` samples, each
sample a metric with its alias and its own timestamp (milliseconds, the specification's
unit), ``seq`` counting every message of the session mod 256. A bad or NaN sample is
``is_null``; a sample whose quality is not good carries the quality word as the property
``Quality`` (UInt32, the layout of ``agent.acquisition.quality``); a text sample of a
numeric tag is ``is_null`` with the property ``text``. Rows the forwarder replayed from
the spool (outage backlog) are ``is_historical``.

**Acknowledged.** The specification publishes data at QoS 0, and so does this uplink by
default: then ``send`` returns when every message of the batch has been written to the
broker connection's socket, which is all QoS 0 can tell; the batch leaves the spool, and
its samples are counted in ``edge_agent_uplink_unconfirmed_points_total`` because nobody
confirmed them. A connection lost before that raises, and the whole batch is sent again
later (a host may see part of it twice). ``data_qos = 1`` waits for the broker's PUBACK
of every message instead (the broker has them; not that a host read them).

**Primary host.** With ``primary_host`` set the node follows that host application's
``STATE`` (``spBv1.0/STATE/<host>``, JSON ``{"online": ..., "timestamp": ...}``; the
Sparkplug 2.2 ``STATE/<host>`` with ``ONLINE``/``OFFLINE`` too): no births and no data
while it is offline (``send`` raises, so batches stay in the spool), and when it goes
offline the node publishes its NDEATH and disconnects, as the specification asks. When the
host is back the node is born again and the spooled batches go out as backlog, i.e. as
historical metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import structlog
from paho.mqtt.client import MQTTMessage
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.acquisition import quality as q
from agent.config.model import SparkplugUplinkConfig
from agent.ops.metrics import Metrics
from agent.windows.batch import Batch, TagTable
from protocols.mqtt.aio import AsyncMqttClient
from protocols.mqtt.session import connect, make_client
from protocols.sparkplug.schema import BD_SEQ, REBIRTH, DataType, payload_class, topic

log = structlog.get_logger()

_REPLAYED = int(q.Flag.REPLAYED)
_STATE_WAIT_S = 2.0  # a retained STATE comes right after the SUBACK; none by then: offline


class HostOffline(ConnectionError):
    """The primary host application is offline: data waits in the spool."""


def _property_value(target: Any, value: object) -> None:
    """One lineage entry as a Sparkplug property value of a fitting type."""
    if isinstance(value, bool):
        target.type, target.boolean_value = DataType.Boolean, value
    elif isinstance(value, int):
        target.type, target.long_value = DataType.Int64, value & 0xFFFFFFFFFFFFFFFF
    elif isinstance(value, float):
        target.type, target.double_value = DataType.Double, value
    elif isinstance(value, str):
        target.type, target.string_value = DataType.String, value
    else:  # a table of processing parameters: as JSON text
        target.type = DataType.String
        target.string_value = json.dumps(value, separators=(",", ":"), sort_keys=True)


class SparkplugUplink:
    def __init__(self, config: SparkplugUplinkConfig) -> None:
        self.name = config.name
        self.config = config
        self.payload = payload_class()
        self._tags: TagTable | None = None
        self._node = config.edge_node or ""
        self._bdseq_file: Path | None = None
        self._metrics = Metrics()
        self._connection: AsyncMqttClient | None = None
        self._bdseq = -1
        self._seq = 0
        self._born_version: int | None = None  # tag table version of the births out
        self._alias: dict[tuple[str, str], int] = {}  # (source, tag) -> alias, as born
        self._text_tags: set[int] = set()  # aliases born as String
        self._host_online: bool | None = None  # None: no STATE seen this connection
        self._host_stamp = -1
        self._state_seen: asyncio.Event | None = None
        self._rebirth_requested = False
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self.unknown_rows = 0  # rows of tags the births do not list (a backlog of another config)

    def bind(self, tags: TagTable, gateway_id: str, data_dir: Path, metrics: Metrics) -> None:
        self._tags = tags
        self._node = self.config.edge_node or gateway_id
        self._bdseq_file = data_dir / "sparkplug" / f"uplink-{self.name}.bdseq"
        self._metrics = metrics

    # -- topics ---------------------------------------------------------------------------------

    def _topic(self, message: str, device: str | None = None) -> str:
        return topic(self.config.group, message, self._node, device)

    @property
    def _state_topics(self) -> tuple[str, str]:
        host = self.config.primary_host
        return (f"spBv1.0/STATE/{host}", f"STATE/{host}")

    # -- Uplink ---------------------------------------------------------------------------------

    async def send(self, batch: Batch) -> None:
        async with self._lock:
            connection = await self._ready()
            try:
                await self._publish_batch(connection, batch)
            except BaseException:
                await self._drop()
                raise

    async def close(self) -> None:
        """An intentional disconnect: NDEATH first, as the specification asks."""
        connection = self._connection
        if connection is not None and not connection.lost.done() and self._born_version is not None:
            with contextlib.suppress(Exception):
                info = connection.client.publish(self._topic("NDEATH"), self._death(), qos=1)
                await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, 1.0), 1.5)
        await self._drop()

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._born_version = None
        if connection is not None:
            await connection.close()
        for future in self._acks.values():
            future.cancel()
        self._acks.clear()

    # -- session --------------------------------------------------------------------------------

    async def _ready(self) -> AsyncMqttClient:
        """A connection whose births are out and current; raises HostOffline while the
        primary host is offline."""
        if self._connection is None or self._connection.lost.done():
            await self._drop()
            self._connection = await self._connect()
        connection = self._connection
        if self.config.primary_host is not None:
            if self._host_online is None:
                assert self._state_seen is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._state_seen.wait(), _STATE_WAIT_S)
            if not self._host_online:
                if self._born_version is not None:  # it went offline: die, as the spec says
                    await self.close()
                raise HostOffline(f"primary host {self.config.primary_host!r} is offline")
        assert self._tags is not None, "bind() first"
        if self._born_version != self._tags.version or self._rebirth_requested:
            await self._births(connection)
        return connection

    def _next_bdseq(self) -> int:
        """One more than the last connection's, across restarts (the file keeps it)."""
        path = self._bdseq_file
        if self._bdseq < 0 and path is not None:
            with contextlib.suppress(OSError, ValueError):
                self._bdseq = int(path.read_text())
        self._bdseq = (self._bdseq + 1) % 256
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(str(self._bdseq))
            except OSError as exc:
                log.warning("cannot keep the Sparkplug bdSeq", uplink=self.name, error=str(exc))
        return self._bdseq

    def _death(self) -> bytes:
        death = self.payload()
        death.metrics.add(name=BD_SEQ, datatype=DataType.UInt64, long_value=self._bdseq)
        return death.SerializeToString()

    async def _connect(self) -> AsyncMqttClient:
        config = self.config
        self._next_bdseq()
        self._host_online, self._host_stamp = None, -1
        self._state_seen = asyncio.Event()
        self._rebirth_requested = False
        client = make_client(config, config.client_id or f"edge-agent-{self._node}-{self.name}")
        client.will_set(self._topic("NDEATH"), self._death(), qos=1)
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        connection, _ = await connect(client, config, clean_start=True)
        filters = [self._topic("NCMD")]
        if config.primary_host is not None:
            filters += self._state_topics
        client.subscribe([(name, 1) for name in filters])
        return connection

    async def _births(self, connection: AsyncMqttClient) -> None:
        """NBIRTH and a DBIRTH per source, from the tag table as it is now."""
        tags = self._tags
        assert tags is not None
        self._rebirth_requested = False
        self._seq = 0
        birth = self.payload()
        birth.metrics.add(name=BD_SEQ, datatype=DataType.UInt64, long_value=self._bdseq)
        birth.metrics.add(name=REBIRTH, datatype=DataType.Boolean, boolean_value=False)
        infos = [self._publish(connection, "NBIRTH", None, birth, qos=0)]
        self._alias = {}
        self._text_tags = set()
        for source_index, source in enumerate(tags.source_names):
            device = self.payload()
            for g in np.flatnonzero((tags.tag_source == source_index) & ~tags.placeholder):
                alias = int(g) + 1
                lineage = tags.lineage[g]
                text = bool(lineage.get("text"))
                metric = device.metrics.add(
                    name=str(tags.tag_names[g]),
                    alias=alias,
                    datatype=DataType.String if text else DataType.Double,
                    is_null=True,
                )
                if text:
                    self._text_tags.add(alias)
                self._alias[(source, str(tags.tag_names[g]))] = alias
                entries = ({"engUnit": lineage["unit"]} if "unit" in lineage else {}) | lineage
                for key, value in entries.items():
                    metric.properties.keys.append(key)
                    _property_value(metric.properties.values.add(), value)
            infos.append(self._publish(connection, "DBIRTH", source, device, qos=0))
        await self._confirmed(connection, infos, "births")
        self._born_version = tags.version
        log.info("Sparkplug births published", uplink=self.name, node=self._node, bdseq=self._bdseq)

    def _publish(
        self, connection: AsyncMqttClient, message: str, device: str | None, payload: Any, qos: int
    ) -> tuple[int, asyncio.Future[None]]:
        payload.timestamp = time.time_ns() // 1_000_000
        payload.seq = self._seq
        self._seq = (self._seq + 1) % 256
        name = self._topic(message, device)
        info = connection.client.publish(name, payload.SerializeToString(), qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {name} failed: {info.rc.name}")
        future = asyncio.get_running_loop().create_future()
        if info.is_published():
            future.set_result(None)
        else:
            self._acks[info.mid] = future
        return info.mid, future

    async def _confirmed(
        self,
        connection: AsyncMqttClient,
        infos: list[tuple[int, asyncio.Future[None]]],
        what: str,
    ) -> None:
        """Wait until each message is written (QoS 0) or acknowledged (QoS 1)."""
        pending = {future for _, future in infos}
        timeout = self.config.publish_timeout / 1e9
        try:
            done, _ = await asyncio.wait(
                (asyncio.gather(*pending), connection.lost),
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for mid, _ in infos:
                self._acks.pop(mid, None)
        if connection.lost.done():
            raise ConnectionError(f"connection lost sending {what}: {connection.lost.result()}")
        if not done:
            raise TimeoutError(f"{what} not out within {timeout:g} s")

    # -- data -----------------------------------------------------------------------------------

    async def _publish_batch(self, connection: AsyncMqttClient, batch: Batch) -> None:
        table = batch.table
        if not table.num_rows:
            return
        source = table["source"].combine_chunks()
        tag = table["tag"].combine_chunks()
        sources, names = source.dictionary.to_pylist(), tag.dictionary.to_pylist()
        source_codes = source.indices.to_numpy()
        tag_codes = tag.indices.to_numpy()
        pairs = source_codes.astype(np.int64) * len(names) + tag_codes
        unique, inverse = np.unique(pairs, return_inverse=True)
        aliases_of = np.array(
            [
                self._alias.get((sources[p // len(names)], names[p % len(names)]), 0)
                for p in unique.tolist()
            ],
            np.int64,
        )
        alias = aliases_of[inverse]
        known = alias > 0
        if not known.all():
            skipped = int((~known).sum())
            self.unknown_rows += skipped
            self._metrics.uplink_unconfirmed.labels(self.name).inc(skipped)
            log.warning(
                "batch rows of tags the births do not list are not sent",
                uplink=self.name,
                batch=batch.batch_id,
                rows=skipped,
            )
        millis = table["time"].cast(pa.int64()).to_numpy() // 1_000_000
        value = table["value"].to_numpy(zero_copy_only=False)
        quality = table["quality"].to_numpy()
        text = table["text"].to_pylist() if table["text"].null_count < table.num_rows else None
        infos = []
        data_qos = self.config.data_qos
        for code in np.unique(source_codes[known]).tolist():
            rows = np.flatnonzero(known & (source_codes == code))
            for start in range(0, rows.shape[0], self.config.max_metrics):
                chunk = rows[start : start + self.config.max_metrics]
                payload = self._data_payload(chunk, alias, millis, value, quality, text)
                infos.append(self._publish(connection, "DDATA", sources[code], payload, data_qos))
        await self._confirmed(connection, infos, f"batch {batch.batch_id}")
        if data_qos == 0:
            self._metrics.uplink_unconfirmed.labels(self.name).inc(int(known.sum()))

    def _data_payload(
        self,
        rows: np.ndarray,
        alias: np.ndarray,
        millis: np.ndarray,
        value: np.ndarray,
        quality: np.ndarray,
        text: list[str | None] | None,
    ) -> Any:
        payload = self.payload()
        metrics = payload.metrics
        text_tags = self._text_tags
        for row, a, ms, v, word in zip(
            rows.tolist(),
            alias[rows].tolist(),
            millis[rows].tolist(),
            value[rows].tolist(),
            quality[rows].tolist(),
            strict=True,
        ):
            text_tag = a in text_tags
            # the datatype again, though the birth declared it (the specification's SHOULD
            # NOT): Tahu's JavaScript decoder, on which many hosts build, needs it per metric
            metric = metrics.add(
                alias=a, timestamp=ms, datatype=DataType.String if text_tag else DataType.Double
            )
            if word & _REPLAYED:
                metric.is_historical = True
            string = text[row] if text is not None else None
            if text_tag:
                if string is not None:
                    metric.string_value = string
                elif math.isnan(v):
                    metric.is_null = True
                else:
                    metric.string_value = repr(v)
            elif math.isnan(v) or word >= q.BAD:
                metric.is_null = True
                if string is not None:
                    metric.properties.keys.append("text")
                    metric.properties.values.add(type=DataType.String, string_value=string)
            else:
                metric.double_value = v
            if word & ~_REPLAYED:
                metric.properties.keys.append("Quality")
                metric.properties.values.add(type=DataType.UInt32, int_value=word & ~_REPLAYED)
        return payload

    # -- paho callbacks -------------------------------------------------------------------------

    def _on_publish(
        self,
        client: object,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_message(self, client: object, userdata: object, message: MQTTMessage) -> None:
        try:
            name = message.topic
        except UnicodeDecodeError:
            return
        if name == self._topic("NCMD"):
            self._command(bytes(message.payload))
        elif name in self._state_topics:
            self._state(name, bytes(message.payload))

    def _command(self, data: bytes) -> None:
        try:
            command = self.payload.FromString(data)
        except Exception:  # a broken command changes nothing
            log.warning("unreadable Sparkplug NCMD ignored", uplink=self.name)
            return
        if any(m.name == REBIRTH and m.boolean_value for m in command.metrics):
            log.info("Sparkplug rebirth requested", uplink=self.name)
            self._rebirth_requested = True

    def _state(self, name: str, data: bytes) -> None:
        """Follow the primary host's STATE: Sparkplug 3.0 JSON (newest timestamp wins), or
        2.2's ONLINE/OFFLINE text."""
        if name.startswith("STATE/"):
            online = data.strip() == b"ONLINE"
        else:
            try:
                state = json.loads(data)
                online, stamp = bool(state["online"]), int(state.get("timestamp", 0))
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable Sparkplug STATE ignored", uplink=self.name, topic=name)
                return
            if stamp < self._host_stamp:
                return
            self._host_stamp = stamp
        if online != self._host_online:
            log.info("Sparkplug primary host", host=self.config.primary_host, online=online)
        self._host_online = online
        if self._state_seen is not None:
            self._state_seen.set()
