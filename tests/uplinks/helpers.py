"""Batches from a real Batcher, collectors running in the test, and store comparisons."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from agent.acquisition.frame import Frame
from agent.commands.collect import Collector
from agent.config.model import CollectConfig, SourceConfig
from agent.uplinks import Uplink
from agent.uplinks.parquet import DATASET_SCHEMA
from agent.windows.batch import Batch, Batcher, TagTable
from protocols._template.driver import TemplateSourceConfig
from protocols.modbus.config import ModbusSourceConfig

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S
COLUMNS = ["time", "source", "tag", "value", "quality", "text"]
TEXTS = ["OPEN", "", None, 'a,"quoted"\nline', "CLOSED"]


def _sources() -> list[SourceConfig]:
    return [
        TemplateSourceConfig(
            name="wave", tags=[{"name": "a", "rate": "10ms"}, {"name": "b", "rate": "10ms"}]
        ),
        ModbusSourceConfig(
            name="plc",
            url="modbus+tcp://127.0.0.1",
            tags=[
                {"name": "speed", "address": "hr:0"},
                {"name": "label", "address": "hr:1", "type": "string", "length": 8},
            ],
        ),
    ]


def make_batches(windows: int = 6, gateway: str = "gw1", per_tag: int = 50) -> list[Batch]:
    """``windows`` one-second batches; every value is a fresh sequence number, so each
    sample is unique; the plc's label tag carries text (empty, null, commas, quotes)."""
    batcher = Batcher(TagTable(_sources()), S, 0, gateway, "c0ffee")
    sequence = 0
    for window in range(windows):
        start = T0 + window * S
        for source, n_tags in ((0, 2), (1, 2)):
            tags = np.repeat(np.arange(n_tags, dtype=np.int32), per_tag)
            step = S // per_tag // 1000 * 1000  # whole microseconds, as PostgreSQL keeps
            times = start + np.tile(np.arange(per_tag, dtype=np.int64) * step, n_tags)
            values = np.arange(sequence, sequence + len(tags), dtype=np.float64)
            sequence += len(tags)
            quality = np.zeros(len(tags), np.uint16)
            text = None
            if source == 1:
                label = tags == 1
                values[label] = np.nan
                text = np.full(len(tags), None, dtype=object)
                text[label] = [TEXTS[i % len(TEXTS)] for i in range(int(label.sum()))]
            batcher.add(source, Frame(tags, times, values, quality, start + S, text))
    batches = batcher.flush()
    assert len(batches) == windows
    return batches


def canonical(table: pa.Table) -> pa.Table:
    """The sample columns as plain types, sorted: two stores compare with ``equals``.
    Times are cut to microseconds, what PostgreSQL keeps (the test data has none finer)."""
    columns = []
    for name in COLUMNS:
        if name not in table.column_names:  # no file of the store had one: text, all null
            table = table.append_column(name, pa.nulls(len(table), pa.string()))
        column = table.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(pa.string())
        if name == "time":
            column = column.cast(pa.timestamp("us", tz="UTC"))
        if name == "quality":
            column = column.cast(pa.int32())
        if name == "value":  # compared bit for bit: NaN equals NaN
            column = pa.chunked_array([chunk.view(pa.int64()) for chunk in column.chunks])
        columns.append(column)
    plain = pa.Table.from_arrays(columns, names=COLUMNS)
    return plain.sort_by([("source", "ascending"), ("tag", "ascending"), ("time", "ascending")])


def stored(store: Path) -> ds.Dataset:
    """A local Parquet store as the central side reads it."""
    return ds.dataset(store, format="parquet", partitioning="hive", schema=DATASET_SCHEMA)


def samples_of(batches: Sequence[Batch]) -> pa.Table:
    return canonical(pa.concat_tables([b.table for b in batches]))


async def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {seconds} s")
        await asyncio.sleep(0.02)


def collect_config(url: str, store: dict[str, Any], client_id: str) -> CollectConfig:
    return CollectConfig.model_validate(
        {"broker": {"url": url, "client_id": client_id}, "store": store}
    )


@asynccontextmanager
async def running(config: CollectConfig, store: Uplink | None = None) -> AsyncIterator[Collector]:
    """A collector running in this loop, subscribed before the block starts."""
    collector = Collector(config, store)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        await wait_for(collector.subscribed.is_set)
        yield collector
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
