"""Sparkplug B driver: a passive host application on the MQTT session the mqtt driver uses.

It subscribes to ``spBv1.0/<group>/+/<edge node>`` and ``.../<device>`` (what the source's
filter names) and hands each message to :class:`~protocols.sparkplug.decoder.SparkplugDecoder`;
sessions, acknowledgement after the frame log write, the redelivery filter of persistent
sessions and the counting of bad input are the mqtt driver's (:class:`SubscriberDriver`).
It never publishes (no NCMD, no DCMD, no STATE), unless ``rebirth_requests = true``: then,
for a node whose data arrives without the birth it needs or after a sequence gap, it
publishes one NCMD ``Node Control/Rebirth = true`` (QoS 0), at most every
``_REBIRTH_EVERY_S`` per node. That is a write to the edge node, so it is opt-in.

Before the agent recovers its spool, :meth:`SparkplugDriver.prepare` names the automatic
tags the catalogue remembers and replays the kept births (``protocols.sparkplug.store``),
so data queued in a persistent session while the gateway was away is decoded by the aliases
its births declared.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine
from typing import Any

from protocols.mqtt.driver import SubscriberDriver
from protocols.mqtt.session import MqttSession
from protocols.sdk import DriverContext
from protocols.sparkplug.config import SparkplugSourceConfig
from protocols.sparkplug.decoder import SparkplugDecoder
from protocols.sparkplug.schema import REBIRTH, DataType, payload_class, topic
from protocols.sparkplug.store import BirthStore, TagCatalogue

STORAGE_PROBLEM = "sparkplug-store"
_HOUSEKEEPING_S = 1.0
_REBIRTH_EVERY_S = 10.0  # per node: a node slow to rebirth is not flooded with commands


class SparkplugDriver(SubscriberDriver):
    config_model = SparkplugSourceConfig
    config: SparkplugSourceConfig
    decoder: SparkplugDecoder

    def __init__(self, config: SparkplugSourceConfig) -> None:
        super().__init__(config, SparkplugDecoder(config))
        self._prepared = False

    def describe(self) -> str:
        config = self.config
        tags = f", up to {config.auto_tag_slots} automatic tags" if config.auto_tags else ""
        return (
            f", {config.url}, spBv1.0/{config.group}/+/{config.edge_node}/{config.device}, "
            f"{len(config.explicit_tags)} mapped metrics{tags}"
        )

    def prepare(self, ctx: DriverContext) -> None:
        if self._prepared:
            return
        self._prepared = True
        folder = ctx.data_dir / "sparkplug"
        name = self.config.name
        catalogue = (
            TagCatalogue(folder / f"{name}.tags", self.config.auto_tag_slots)
            if self.config.auto_tags
            else None
        )
        self.decoder.log = ctx.log
        self.decoder.attach(BirthStore(folder / name), catalogue, ctx.describe_tag)

    async def run(self, ctx: DriverContext) -> None:
        self.prepare(ctx)
        await super().run(ctx)

    def _report_errors(self, ctx: DriverContext) -> None:
        super()._report_errors(ctx)
        error, self.decoder.store_error = self.decoder.store_error, None
        if error is not None:
            ctx.problems.fail(
                STORAGE_PROBLEM,
                "cannot keep Sparkplug births or automatic tags: a restart may not decode "
                "data queued meanwhile, and new automatic tags are not mapped",
                error=str(error),
            )

    def session_tasks(
        self, session: MqttSession, ctx: DriverContext
    ) -> list[Coroutine[Any, Any, None]]:
        return [self._request_rebirths(session, ctx)] if self.config.rebirth_requests else []

    async def _request_rebirths(self, session: MqttSession, ctx: DriverContext) -> None:
        asked: dict[tuple[str, str], float] = {}  # node -> monotonic time of the last NCMD
        command = payload_class()()
        command.metrics.add(name=REBIRTH, datatype=DataType.Boolean, boolean_value=True)
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            wanted, self.decoder.rebirth_wanted = self.decoder.rebirth_wanted, set()
            now = time.monotonic()
            for group, node in sorted(wanted):
                if now - asked.get((group, node), -math.inf) < _REBIRTH_EVERY_S:
                    continue
                asked[(group, node)] = now
                command.timestamp = time.time_ns() // 1_000_000
                name = topic(group, "NCMD", node)
                session.connection.client.publish(name, command.SerializeToString(), qos=0)
                ctx.log.info("Sparkplug rebirth requested", node=f"{group}/{node}")

    @classmethod
    def conformance_peer(cls) -> Any:
        from simulators.sparkplug_node import conformance_peer

        return conformance_peer()
