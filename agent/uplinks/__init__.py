"""Uplinks: where closed batches go. Each acknowledges a batch by returning from ``send``."""

from __future__ import annotations

from typing import Protocol

from agent.batch import Batch
from agent.config import ParquetUplinkConfig, UplinkConfig


class Uplink(Protocol):
    name: str

    async def send(self, batch: Batch) -> None:
        """Deliver the batch durably; return only once it is acknowledged, else raise."""


def make_uplink(config: UplinkConfig) -> Uplink:
    from agent.uplinks.parquet import ParquetUplink

    if isinstance(config, ParquetUplinkConfig):
        return ParquetUplink(config)
    raise ValueError(f"unsupported uplink type {config.type!r}")
