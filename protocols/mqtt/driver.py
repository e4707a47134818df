"""MQTT driver: subscribe to the tags' topics, map each message to samples, emit frames.

One ``run`` is one MQTT connection: connect (TLS and credentials as configured), subscribe
to every tag filter (as ``$share/<group>/...`` when sharing), then decode messages as they
arrive until the connection is lost, which ends ``run`` with an error so the supervisor
reconnects with backoff; the next session subscribes again. With ``clean_session = false``
the broker keeps the session meanwhile and delivers the QoS 1/2 messages it queued.

Messages are decoded in paho's callback on the event loop, straight into column lists
(``mapping.PayloadDecoder``); at the end of each network read burst the columns become one
Frame, queued for an emitter task that awaits ``ctx.emit``. When the agent applies
backpressure the queue fills and the driver stops reading the socket, so TCP holds back the
broker instead of memory growing. Bad payloads are counted by reason in
``edge_agent_payload_errors`` and logged once per reason until that reason has been quiet
for ``_QUIET_S`` (then "recovered").
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.frame import Frame, concat
from protocols.mqtt.aio import AsyncMqttClient
from protocols.mqtt.config import MqttSourceConfig
from protocols.mqtt.mapping import DECODER_BUG, UNMAPPED_TOPIC, PayloadDecoder
from protocols.sdk import Driver, DriverContext

_MAX_QUEUED_SAMPLES = 100_000  # decoded, not yet taken by the agent: then stop reading
_QUIET_S = 60.0
_HOUSEKEEPING_S = 1.0


def tls_context(config: MqttSourceConfig) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (or the system CAs), present the client cert."""
    context = ssl.create_default_context(
        cafile=str(config.ca_file) if config.ca_file is not None else None
    )
    if config.certificate is not None and config.private_key is not None:
        context.load_cert_chain(str(config.certificate), str(config.private_key))
    if config.tls_insecure:
        context.check_hostname = False
    return context


def make_client(config: MqttSourceConfig) -> mqtt.Client:
    """A paho client for one session of the source (VERSION2 callbacks, no paho thread)."""
    v5 = config.mqtt_version == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=config.session_client_id,
        clean_session=None if v5 else config.clean_session,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    client.suppress_exceptions = True  # a bug in a callback must not unwind paho's state
    if config.tls:
        client.tls_set_context(tls_context(config))
        client.tls_insecure_set(config.tls_insecure)
    if config.username is not None:
        client.username_pw_set(config.username, config.password())
    return client


class MqttDriver(Driver):
    config_model = MqttSourceConfig
    config: MqttSourceConfig

    def __init__(self, config: MqttSourceConfig) -> None:
        super().__init__(config)
        self.decoder = PayloadDecoder(config)
        self._last_error: dict[str, float] = {}  # reason -> monotonic time of last occurrence

    def describe(self) -> str:
        config = self.config
        session = "clean" if config.clean_session else "persistent"
        return (
            f", {config.url}, MQTT {config.mqtt_version}, QoS {config.qos}, {session} session, "
            f"{len(self.decoder.filters())} subscriptions"
        )

    async def run(self, ctx: DriverContext) -> None:
        config = self.config
        frames: collections.deque[Frame] = collections.deque()
        ready = asyncio.Event()
        connection = AsyncMqttClient(make_client(config))

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            try:
                topic = message.topic
            except UnicodeDecodeError:  # brokers check this; a broken one might not
                self.decoder.reject(UNMAPPED_TOPIC, "?", "topic is not UTF-8")
                return
            try:
                self.decoder.decode(topic, message.payload, time.time_ns())
            except Exception as exc:  # a decoder bug: count it, keep the session
                self.decoder.reject(DECODER_BUG, topic, repr(exc))

        def on_burst() -> None:
            frame = self.decoder.take_frame(time.time_ns())
            if frame is not None:
                frames.append(frame)
                ready.set()
                if sum(map(len, frames)) >= _MAX_QUEUED_SAMPLES:
                    connection.pause_reading()

        connection.on_burst = on_burst
        connection.client.on_message = on_message
        subscribed: asyncio.Future[list[ReasonCode]] = asyncio.get_running_loop().create_future()

        def on_subscribe(
            client: mqtt.Client,
            userdata: Any,
            mid: int,
            codes: list[ReasonCode],
            properties: Properties | None,
        ) -> None:
            if not subscribed.done():
                subscribed.set_result(codes)

        connection.client.on_subscribe = on_subscribe
        try:
            await connection.connect(
                config.host,
                config.port,
                max(1, round(config.keepalive / 1e9)),
                config.connect_timeout / 1e9,
                clean_start=config.clean_session if config.mqtt_version == "5" else None,
                properties=self._connect_properties(),
            )
            await self._subscribe(connection, subscribed, ctx)
            ctx.set_connected(True)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._emit_forever(frames, ready, connection, ctx))
                tasks.create_task(self._housekeeping(ctx))
                tasks.create_task(self._until_lost(connection))
        finally:
            ctx.set_connected(False)
            await connection.close()
            on_burst()
            self._report_errors(ctx)
            task = asyncio.current_task()
            if frames and task is not None and not task.cancelling():
                # a lost session: what was decoded before the end is still data (when
                # cancelled, the agent is stopping and must not wait on its own queue)
                await ctx.emit(concat(list(frames)))

    def _connect_properties(self) -> Properties | None:
        if self.config.mqtt_version != "5":
            return None
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if not self.config.clean_session:
            properties.SessionExpiryInterval = round(self.config.session_expiry / 1e9)
        return properties

    async def _subscribe(
        self,
        connection: AsyncMqttClient,
        subscribed: asyncio.Future[list[ReasonCode]],
        ctx: DriverContext,
    ) -> None:
        config = self.config
        filters = self.decoder.filters()
        prefix = f"$share/{config.shared_group}/" if config.shared_group else ""
        if config.mqtt_version == "5":
            # retained messages only for new subscriptions: a resumed session gets none again
            options = SubscribeOptions(qos=config.qos, retainHandling=1)
            requests: list[tuple[str, Any]] = [(prefix + f, options) for f in filters]
        else:
            requests = [(prefix + f, config.qos) for f in filters]
        connection.client.subscribe(requests)
        try:
            codes = await asyncio.wait_for(subscribed, config.connect_timeout / 1e9)
        except TimeoutError:
            raise ConnectionError("the broker did not answer the SUBSCRIBE") from None
        for (topic, _), code in zip(requests, codes, strict=False):
            if code.is_failure:
                ctx.problems.fail(f"subscribe:{topic}", "subscription refused", reason=str(code))
            else:
                ctx.problems.ok(f"subscribe:{topic}")
        if all(code.is_failure for code in codes):
            raise ConnectionError(f"the broker refused every subscription ({codes[0]})")

    async def _emit_forever(
        self,
        frames: collections.deque[Frame],
        ready: asyncio.Event,
        connection: AsyncMqttClient,
        ctx: DriverContext,
    ) -> None:
        while True:
            await ready.wait()
            ready.clear()
            while frames:
                batch = list(frames)
                frames.clear()
                connection.resume_reading()
                await ctx.emit(concat(batch))

    async def _housekeeping(self, ctx: DriverContext) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            self._report_errors(ctx)

    def _report_errors(self, ctx: DriverContext) -> None:
        """Count the decoder's errors; log each reason once, and "recovered" when quiet."""
        errors, examples = self.decoder.take_errors()
        now = time.monotonic()
        for reason, count in errors.items():
            ctx.metrics.payload_errors.labels(ctx.source, reason).inc(count)
            self._last_error[reason] = now
            ctx.problems.fail(f"payload:{reason}", "bad payload", example=examples[reason])
        for reason, last in list(self._last_error.items()):
            if now - last > _QUIET_S:
                del self._last_error[reason]
                ctx.problems.ok(f"payload:{reason}")

    @staticmethod
    async def _until_lost(connection: AsyncMqttClient) -> None:
        raise ConnectionError(await connection.lost)

    @classmethod
    def conformance_peer(cls) -> Any:
        from simulators.mqtt_scada import conformance_peer

        return conformance_peer()
