"""Uplinks: where closed batches go. Each acknowledges a batch by returning from ``send``."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from agent.config.model import (
    MqttUplinkConfig,
    ParquetUplinkConfig,
    PostgresUplinkConfig,
    SparkplugUplinkConfig,
    UplinkConfig,
)
from agent.ops.metrics import Metrics
from agent.windows.batch import Batch, TagTable


class RejectedBatch(Exception):
    """The uplink refuses this batch for good, for what it holds (too large, a format the
    store rejects), not for an outage: sending it again would fail again. The forwarder
    quarantines it and goes on with the next batch; any other exception is retried."""


class Uplink(Protocol):
    name: str

    async def send(self, batch: Batch) -> None:
        """Deliver the batch durably; return only once it is acknowledged, else raise
        (RejectedBatch when retrying cannot help)."""

    async def close(self) -> None:
        """Release connections on stop; must not raise."""


@runtime_checkable
class GatewayAware(Protocol):
    """An uplink that must know the gateway before its first send (a Sparkplug edge node
    announces every tag in its birth certificates); the agent calls ``bind`` once."""

    def bind(self, tags: TagTable, gateway_id: str, data_dir: Path, metrics: Metrics) -> None:
        """The tag table (names, lineage), the gateway id, its state folder, its metrics."""


def make_uplink(config: UplinkConfig) -> Uplink:
    """The uplink of a config; each module is imported only when used (psycopg is optional)."""
    if isinstance(config, ParquetUplinkConfig):
        from agent.uplinks.parquet import ParquetUplink

        return ParquetUplink(config)
    if isinstance(config, MqttUplinkConfig):
        from agent.uplinks.mqtt import MqttUplink

        return MqttUplink(config)
    if isinstance(config, PostgresUplinkConfig):
        from agent.uplinks.postgres import PostgresUplink

        return PostgresUplink(config)
    if isinstance(config, SparkplugUplinkConfig):
        from agent.uplinks.sparkplug import SparkplugUplink

        return SparkplugUplink(config)
    raise ValueError(f"unsupported uplink type {config.type!r}")
