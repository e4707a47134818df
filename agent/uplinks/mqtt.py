"""The ``mqtt`` uplink: each batch published to a central broker, acknowledged by PUBACK.

The payload is the batch's :func:`agent.store.encoding.encode` bytes (the same Parquet the spool
and the ``parquet`` uplink hold), published with QoS 1 to
``<topic_prefix>/<gateway_id>/batches``; MQTT 5 properties carry the content type and, as
user properties, the batch id, gateway, schema and encoding, so a broker-side rule can route
without decoding. ``send`` returns only once the broker's PUBACK came back with a success
code; a lost connection or a missing PUBACK raises, the caller retries with its backoff, and
the next ``send`` connects again. A resend after a lost PUBACK may reach the broker twice:
``edge-agent collect`` writes by batch id, so the store holds it once.

A batch names its lineage record by digest (:mod:`agent.store.lineage`); the first batch
of each digest on a connection carries the record inline (``edge_agent.tags``), so a
collector, which writes it beside the data, has it before any batch that only names it.
Once that batch's PUBACK came back, the batches naming the same digest go without it.

The connection is the MQTT source's own asyncio adapter and client factory (TLS, user name
and password as in a ``[[sources]]`` table); no paho thread runs.
"""

from __future__ import annotations

import asyncio

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config.model import MqttUplinkConfig
from agent.store.encoding import MEDIA_TYPE, encode, encoded, lineage_of
from agent.uplinks import RejectedBatch
from agent.windows.batch import Batch
from protocols.mqtt.aio import AsyncMqttClient
from protocols.mqtt.session import connect, make_client

# PUBACK reasons that refuse the batch itself: Packet too large, Payload format invalid
# (others, such as Not authorized or Quota exceeded, are the broker's state: retried)
_REJECTS_THE_BATCH = frozenset({0x95, 0x99})

BATCH_SCHEMA = "edge-agent.batch/1"  # the SCHEMA of agent.windows.batch; bump when it changes
BATCH_ENCODING = "parquet+zstd"


def batch_topic(topic_prefix: str, gateway_id: str) -> str:
    return f"{topic_prefix}/{gateway_id}/batches"


def publish_properties(batch: Batch) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ContentType = MEDIA_TYPE
    properties.UserProperty = [
        ("batch_id", batch.batch_id),
        ("gateway_id", batch.gateway_id),
        ("schema", BATCH_SCHEMA),
        ("encoding", BATCH_ENCODING),
    ]
    return properties


def _payload(batch: Batch, inline_lineage: bool) -> bytes:
    """The batch's bytes, re-encoded with its lineage record inline when asked."""
    return encode(batch.table, inline_lineage=True) if inline_lineage else encoded(batch)


class MqttUplink:
    def __init__(self, config: MqttUplinkConfig) -> None:
        self.name = config.name
        self.config = config
        self._connection: AsyncMqttClient | None = None
        self._acks: dict[int, asyncio.Future[ReasonCode]] = {}
        self._lock = asyncio.Lock()
        self._carried: set[str] = set()  # lineage digests acknowledged on this connection

    async def send(self, batch: Batch) -> None:
        async with self._lock:  # one batch in flight: PUBACKs then come back in order
            connection = await self._connected()
            try:
                await self._publish(connection, batch)
            except BaseException:
                await self.close()  # no PUBACK state worth keeping: the next send reconnects
                raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
        for future in self._acks.values():
            future.cancel()
        self._acks.clear()
        self._carried.clear()  # another connection may reach another collector

    async def _publish(self, connection: AsyncMqttClient, batch: Batch) -> None:
        lineage = lineage_of(batch.table)
        inline = lineage is not None and lineage[0] not in self._carried
        payload = await asyncio.to_thread(_payload, batch, inline)
        topic = batch_topic(self.config.topic_prefix, batch.gateway_id)
        info = connection.client.publish(
            topic, payload, qos=1, properties=publish_properties(batch)
        )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic} failed: {info.rc.name}")
        acked = asyncio.get_running_loop().create_future()
        self._acks[info.mid] = acked
        timeout = self.config.publish_timeout / 1e9
        try:
            done, _ = await asyncio.wait(
                (acked, connection.lost), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._acks.pop(info.mid, None)
        if acked in done:
            reason = acked.result()
            if reason.value in _REJECTS_THE_BATCH:
                raise RejectedBatch(f"the broker refused batch {batch.batch_id}: {reason}")
            if reason.is_failure:
                raise ConnectionError(f"the broker refused batch {batch.batch_id}: {reason}")
            if lineage is not None:
                self._carried.add(lineage[0])
            return
        if connection.lost in done:
            raise ConnectionError(
                f"no PUBACK for batch {batch.batch_id}: {connection.lost.result()}"
            )
        raise TimeoutError(f"no PUBACK for batch {batch.batch_id} within {timeout:g} s")

    async def _connected(self) -> AsyncMqttClient:
        if self._connection is not None and not self._connection.lost.done():
            return self._connection
        await self.close()
        config = self.config
        # no session to resume: a batch without PUBACK is the caller's to send again
        client = make_client(config, config.client_id or "")
        client.on_publish = self._on_publish
        connection, _ = await connect(client, config, clean_start=True)
        self._connection = connection
        return connection

    def _on_publish(
        self,
        client: object,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        acked = self._acks.get(mid)
        if acked is not None and not acked.done():
            acked.set_result(reason)
