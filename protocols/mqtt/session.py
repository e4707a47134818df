"""One MQTT session of a source: connect, subscribe, decode bursts into frames, hand them on.

Messages are decoded in paho's callback on the event loop, straight into the decoder's column
lists; at the end of each network read burst the columns become one Frame, queued for
:meth:`MqttSession.emit_forever`, which awaits ``ctx.emit``. When the agent applies
backpressure the queue grows, and past ``_MAX_QUEUED_SAMPLES`` the session stops reading
the socket, so TCP holds the broker back instead of the gateway's memory growing.

QoS 1/2 messages are acknowledged by hand (:mod:`protocols.mqtt.acking`), in the order they
arrived, only after ``ctx.emit`` of the frame holding them returned, that is once the frame
is in the agent's frame log: a gateway killed before that gets them again from its
persistent session, and :mod:`protocols.mqtt.redelivery` drops those it had stored. If
``ctx.emit`` raises, nothing is acknowledged and the session ends; the broker redelivers.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.acquisition.frame import Frame, concat
from agent.config.model import MqttConnection
from protocols.mqtt.acking import DurableAckClient
from protocols.mqtt.aio import AsyncMqttClient
from protocols.mqtt.config import MqttSubscriberConfig
from protocols.mqtt.redelivery import DeliveredLog, message_digest
from protocols.sdk import DriverContext

_MAX_QUEUED_SAMPLES = 100_000  # decoded, not yet taken by the agent: then stop reading
UNMAPPED_TOPIC = "unmapped_topic"  # payload_errors reason: a topic no tag matches
DECODER_BUG = "decoder_bug"  # an exception inside decode: never expected, counted if it happens


class MessageDecoder(Protocol):
    """What a session needs from a driver's payload decoder (``mqtt``: JSON mapping,
    ``sparkplug``: protobuf with birth certificates). Messages arrive in the order the
    broker sent them; ``decode`` must never raise on any input, it counts (``reject``)."""

    def filters(self) -> list[str]:
        """The subscription filters."""
        ...

    def decode(self, topic: str, payload: bytes | bytearray, received: int) -> None:
        """Append the samples of one message to the columns being collected."""
        ...

    def reject(self, reason: str, topic: str, detail: str) -> None:
        """Count one bad message under ``reason``, keeping an example for the log."""
        ...

    def take_frame(self, received: int) -> Frame | None:
        """The samples decoded since the last call as one Frame, or None."""
        ...

    def take_errors(self) -> tuple[dict[str, int], dict[str, str]]:
        """(occurrences by reason, first example by reason) since the last call."""
        ...


def tls_context(config: MqttConnection) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (or the system CAs), present the client cert."""
    context = ssl.create_default_context(
        cafile=str(config.ca_file) if config.ca_file is not None else None
    )
    if config.certificate is not None and config.private_key is not None:
        context.load_cert_chain(str(config.certificate), str(config.private_key))
    if config.tls_insecure:
        context.check_hostname = False
    return context


def make_client(
    config: MqttConnection,
    client_id: str,
    *,
    v5: bool = True,
    clean_session: bool = True,
    manual_ack: bool = False,
) -> mqtt.Client:
    """A paho client for one connection (VERSION2 callbacks, no paho thread), with the TLS
    and credentials of ``config``; shared by the source, the mqtt uplink and the collector.
    ``manual_ack``: QoS 1/2 acknowledged only when the owner calls ``client.ack`` (after a
    durable write)."""
    client = (DurableAckClient if manual_ack else mqtt.Client)(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else clean_session,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    client.suppress_exceptions = True  # a bug in a callback must not unwind paho's state
    if config.tls:
        client.tls_set_context(tls_context(config))
        client.tls_insecure_set(config.tls_insecure)
    if config.username is not None:
        client.username_pw_set(config.username, config.password())
    return client


async def connect(
    client: mqtt.Client,
    config: MqttConnection,
    clean_start: bool | None,
    properties: Properties | None = None,
) -> tuple[AsyncMqttClient, mqtt.ConnectFlags]:
    """``client`` connected to ``config``'s broker with its keepalive and timeout; on any
    failure the socket is released before the error goes up, so a retry loop leaks none."""
    connection = AsyncMqttClient(client)
    try:
        flags = await connection.connect(
            config.host,
            config.port,
            max(1, round(config.keepalive / 1e9)),
            config.connect_timeout / 1e9,
            clean_start=clean_start,
            properties=properties,
        )
    except BaseException:
        await connection.close()
        raise
    return connection, flags


@dataclass(slots=True)
class Received:
    """The QoS 1/2 messages of one or more read bursts, in arrival order."""

    acks: list[tuple[int, int]] = field(default_factory=list)  # (packet id, QoS)
    mids: list[int] = field(default_factory=list)  # of those to remember as stored:
    digests: list[int] = field(default_factory=list)  # all but dropped redeliveries

    def extend(self, other: Received) -> None:
        self.acks += other.acks
        self.mids += other.mids
        self.digests += other.digests


class MqttSession:
    """The connection, the frames waiting for the agent, and the subscribe handshake.

    ``delivered`` (persistent sessions only) remembers the stored messages across
    sessions; it belongs to the driver.
    """

    def __init__(
        self,
        config: MqttSubscriberConfig,
        decoder: MessageDecoder,
        ctx: DriverContext,
        delivered: DeliveredLog | None = None,
    ) -> None:
        self.config = config
        self.decoder = decoder
        self.ctx = ctx
        self.delivered = delivered
        # read bursts not yet handed to the agent, and those ctx.emit is taking now
        self.pending: collections.deque[tuple[Frame | None, Received]] = collections.deque()
        self._emitting: list[tuple[Frame | None, Received]] = []
        self._received = Received()  # of the burst being read
        self._ready = asyncio.Event()
        self._subscribed: asyncio.Future[list[ReasonCode]] = (
            asyncio.get_running_loop().create_future()
        )
        client = make_client(
            config,
            config.session_client_id,
            v5=config.mqtt_version == "5",
            clean_session=config.clean_session,
            manual_ack=True,
        )
        self.connection = AsyncMqttClient(client, on_burst=self._on_burst)
        self.connection.client.on_message = self._on_message
        self.connection.client.on_subscribe = self._on_subscribe

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and subscribe; raises ConnectionError with the reason."""
        config = self.config
        flags = await self.connection.connect(
            config.host,
            config.port,
            max(1, round(config.keepalive / 1e9)),
            config.connect_timeout / 1e9,
            clean_start=config.clean_session if config.mqtt_version == "5" else None,
            properties=self._connect_properties(),
        )
        if self.delivered is not None and not flags.session_present:
            self.delivered.reset()
        await self._subscribe()

    async def until_lost(self) -> None:
        """Return never; raise ConnectionError when the connection is gone."""
        raise ConnectionError(await self.connection.lost)

    async def close(self, stopping: bool) -> None:
        """Disconnect; hand on what was decoded unless the agent is ``stopping`` (it must
        not wait on its own queue then). A lost session's frames are still data; they
        cannot be acknowledged any more, so a persistent session redelivers them, and
        remembering them as stored drops that redelivery."""
        await self.connection.close()
        self._on_burst()
        left = [*self._emitting, *self.pending]
        self._emitting = []
        self.pending.clear()
        if left and not stopping:
            await self._hand_on(left)

    async def emit_forever(self) -> None:
        """Hand queued frames to the agent, joined, and resume reading once they are taken;
        acknowledge their messages once ``ctx.emit`` returned."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self.pending:
                self._emitting = list(self.pending)
                self.pending.clear()
                self.connection.resume_reading()
                received = await self._hand_on(self._emitting)
                self._emitting = []
                client = self.connection.client
                for mid, qos in received.acks:
                    client.ack(mid, qos)

    async def _hand_on(self, bursts: list[tuple[Frame | None, Received]]) -> Received:
        """Emit the bursts' frames as one, then remember their messages as stored."""
        received = Received()
        for _, burst in bursts:
            received.extend(burst)
        records = DeliveredLog.records(received.mids, received.digests)
        frames = [frame for frame, _ in bursts if frame is not None]
        if frames:
            await self.ctx.emit(concat(frames))
        if self.delivered is not None:
            try:
                self.delivered.record(records)
            except OSError as exc:  # the frames are stored: acknowledge them all the same
                self.ctx.problems.fail(
                    "delivered-log",
                    "cannot record stored MQTT messages; a kill now may store redeliveries twice",
                    error=str(exc),
                )
            else:
                self.ctx.problems.ok("delivered-log")
        return received

    def _connect_properties(self) -> Properties | None:
        if self.config.mqtt_version != "5":
            return None
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if not self.config.clean_session:
            properties.SessionExpiryInterval = round(self.config.session_expiry / 1e9)
        return properties

    async def _subscribe(self) -> None:
        config = self.config
        prefix = f"$share/{config.shared_group}/" if config.shared_group else ""
        filters = [prefix + topic for topic in self.decoder.filters()]
        if config.mqtt_version == "5":
            # retained messages only for new subscriptions: a resumed session gets none again
            options = SubscribeOptions(qos=config.qos, retainHandling=1)
            requests: list[tuple[str, Any]] = [(topic, options) for topic in filters]
        else:
            requests = [(topic, config.qos) for topic in filters]
        self.connection.client.subscribe(requests)
        try:
            codes = await asyncio.wait_for(self._subscribed, config.connect_timeout / 1e9)
        except TimeoutError:
            raise ConnectionError("the broker did not answer the SUBSCRIBE") from None
        problems = self.ctx.problems
        for topic, code in zip(filters, codes, strict=False):
            if code.is_failure:
                problems.fail(f"subscribe:{topic}", "subscription refused", reason=str(code))
            else:
                problems.ok(f"subscribe:{topic}")
        if all(code.is_failure for code in codes):
            raise ConnectionError(f"the broker refused every subscription ({codes[0]})")

    # -- paho callbacks (on the event loop) --------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:  # brokers check this; a broken one might not
            topic = None
        if message.qos and not self._first_time(message, topic):
            return
        if topic is None:
            self.decoder.reject(UNMAPPED_TOPIC, "?", "topic is not UTF-8")
            return
        try:
            self.decoder.decode(topic, message.payload, time.time_ns())
        except Exception as exc:  # a decoder bug: count it, keep the session
            self.decoder.reject(DECODER_BUG, topic, repr(exc))

    def _first_time(self, message: mqtt.MQTTMessage, topic: str | None) -> bool:
        """Queue the QoS 1/2 message's acknowledgement; False if it is a redelivery of a
        message stored already (then it is only acknowledged)."""
        received = self._received
        received.acks.append((message.mid, message.qos))
        if self.delivered is None:
            return True
        digest = message_digest(topic or "", message.payload)
        if message.dup and self.delivered.is_stored(message.mid, digest):
            return False
        received.mids.append(message.mid)
        received.digests.append(digest)
        return True

    def _on_burst(self) -> None:
        frame = self.decoder.take_frame(time.time_ns())
        received = self._received
        if frame is None and not received.acks:
            return
        self._received = Received()
        self.pending.append((frame, received))
        self._ready.set()
        if sum(len(frame) for frame, _ in self.pending if frame is not None) >= _MAX_QUEUED_SAMPLES:
            self.connection.pause_reading()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if not self._subscribed.done():
            self._subscribed.set_result(codes)
