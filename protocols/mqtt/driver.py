"""MQTT driver: subscribe to the tags' topics, map each message to samples, emit frames.

:class:`SubscriberDriver` is the part every broker-subscribing driver shares (``mqtt`` and
``sparkplug``): sessions, the delivered log of persistent sessions, and the counting and
logging of the decoder's bad-input reasons; a subclass brings the decoder.

One ``run`` is one MQTT connection (``session.MqttSession``): connect (TLS and credentials
as configured), subscribe to every tag filter (as ``$share/<group>/...`` when sharing),
then decode messages as they arrive until the connection is lost, which ends ``run`` with
an error so the supervisor reconnects with backoff; the next session subscribes again.
With ``clean_session = false`` the broker keeps the session meanwhile and delivers the
QoS 1/2 messages it queued, and those the gateway had not acknowledged; the ones of those
already stored are dropped (:mod:`protocols.mqtt.redelivery`), counted as
``edge_agent_payload_errors{reason="duplicate"}`` and logged at info level: they are not
lost, they are stored once.

The decoder outlives sessions; its error counts are moved to
``edge_agent_payload_errors`` every second and each reason is logged once, until it has
been quiet for ``_QUIET_S`` (then "recovered").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from protocols.mqtt.config import MqttSourceConfig, MqttSubscriberConfig
from protocols.mqtt.mapping import PayloadDecoder
from protocols.mqtt.redelivery import DeliveredLog
from protocols.mqtt.session import MessageDecoder, MqttSession
from protocols.sdk import Driver, DriverContext

_QUIET_S = 60.0
_HOUSEKEEPING_S = 1.0
DUPLICATE = "duplicate"  # payload_errors reason of a dropped redelivery


class SubscriberDriver(Driver):
    """A source fed by broker subscriptions; the subclass decides what a payload means."""

    config: MqttSubscriberConfig

    def __init__(self, config: MqttSubscriberConfig, decoder: MessageDecoder) -> None:
        super().__init__(config)
        self.decoder = decoder
        self._last_error: dict[str, float] = {}  # reason -> monotonic time of last occurrence
        self.delivered: DeliveredLog | None = None  # opened by the first persistent run

    def describe(self) -> str:
        config = self.config
        session = "clean" if config.clean_session else "persistent"
        return (
            f", {config.url}, MQTT {config.mqtt_version}, QoS {config.qos}, {session} session, "
            f"{len(self.decoder.filters())} subscriptions"
        )

    def probe_address(self) -> tuple[str, int] | None:
        return (self.config.host, self.config.port)

    async def run(self, ctx: DriverContext) -> None:
        if self.delivered is None and not self.config.clean_session:
            path = ctx.data_dir / "mqtt" / f"{self.config.name}.delivered"
            self.delivered = DeliveredLog(path)
        session = MqttSession(self.config, self.decoder, ctx, self.delivered)
        stopping = False
        try:
            await session.open()
            ctx.set_connected(True)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(session.emit_forever())
                tasks.create_task(session.until_lost())
                tasks.create_task(self._housekeeping(ctx))
                for task in self.session_tasks(session, ctx):
                    tasks.create_task(task)
        except asyncio.CancelledError:
            # the agent is stopping (not Task.cancelling(): on Python 3.11 a TaskGroup
            # whose child failed leaves it raised)
            stopping = True
            raise
        finally:
            ctx.set_connected(False)
            try:
                await session.close(stopping)
            finally:
                if self.delivered is not None:
                    self.delivered.close()
                self._report_errors(ctx)

    def session_tasks(
        self, session: MqttSession, ctx: DriverContext
    ) -> list[Coroutine[Any, Any, None]]:
        """Extra coroutines for the session's lifetime (a subclass's); none by default."""
        return []

    async def _housekeeping(self, ctx: DriverContext) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            self._report_errors(ctx)

    def _report_errors(self, ctx: DriverContext) -> None:
        """Count the decoder's errors; log each reason once, and "recovered" when quiet."""
        errors, examples = self.decoder.take_errors()
        now = time.monotonic()
        if self.delivered is not None and (duplicates := self.delivered.take_duplicates()):
            ctx.metrics.payload_errors.labels(ctx.source, DUPLICATE).inc(duplicates)
            ctx.log.info("redelivered messages dropped: stored already", messages=duplicates)
        for reason, count in errors.items():
            ctx.metrics.payload_errors.labels(ctx.source, reason).inc(count)
            self._last_error[reason] = now
            ctx.problems.fail(f"payload:{reason}", "bad payload", example=examples[reason])
        for reason, last in list(self._last_error.items()):
            if now - last > _QUIET_S:
                del self._last_error[reason]
                ctx.problems.ok(f"payload:{reason}")


class MqttDriver(SubscriberDriver):
    config_model = MqttSourceConfig
    config: MqttSourceConfig
    decoder: PayloadDecoder

    def __init__(self, config: MqttSourceConfig) -> None:
        super().__init__(config, PayloadDecoder(config))

    @classmethod
    def conformance_peer(cls) -> Any:
        from simulators.mqtt_scada import conformance_peer

        return conformance_peer()
