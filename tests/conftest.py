"""Shared helpers: running an agent briefly and reading its store.

The simulator fixtures (``modbus_plc``) come from the ``simulators.pytest_plugin`` plugin."""

from __future__ import annotations

import asyncio
import os
import tomllib
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import structlog

from agent.config.load import parse_config
from agent.runtime import Agent
from agent.windows.batch import Batch


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    """structlog's set-up is global: an earlier in-process ``edge-agent`` command (``browse``,
    ``certs``, the demo) leaves it filtering below warning, so a later test capturing the
    logs would miss every "recovered" line; and its stream may be one pytest has closed."""
    structlog.reset_defaults()


def agent_toml(
    store: Path,
    sources: str,
    window: str = "1s",
    lateness: str = "300ms",
    state: Path | None = None,
) -> str:
    """An agent config writing to ``store``; its state (spool, certificates) goes to
    ``state``, by default a folder beside the store, so no two tests share a spool."""
    state = state or store.with_name(f"{store.name}-state")
    return (
        f'[agent]\ngateway_id = "test-gw"\nmetrics = ""\ndata_dir = "{state}"\n'
        f'[batch]\nwindow = "{window}"\nlateness = "{lateness}"\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{store}"\n\n{sources}'
    )


async def run_agent(
    text: str,
    seconds: float,
    stop_after: asyncio.Event | None = None,
    on_delivered: Callable[[Batch], None] | None = None,
) -> Agent:
    """Run an agent on a config text for ``seconds`` of wall time, then stop it (flushing);
    ``on_delivered`` sees the batches every uplink has (the agent keeps none)."""
    agent = Agent(parse_config(tomllib.loads(text), Path("test.toml")), on_delivered=on_delivered)
    stop = stop_after or asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return agent


@asynccontextmanager
async def running_agent(text: str) -> AsyncIterator[Agent]:
    """An agent running in this loop on a config text; stopped (flushing) at the end."""
    agent = Agent(parse_config(tomllib.loads(text), Path("test.toml")))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await task


def read_store(store: Path) -> pa.Table:
    """Everything in a Parquet store, as the central side would read it: with every
    file's columns (a batch file leaves out those it has no value in), as DuckDB's
    ``union_by_name`` does."""
    found = ds.dataset(store, format="parquet", partitioning="hive")
    schema = pa.unify_schemas([*(f.physical_schema for f in found.get_fragments()), found.schema])
    return ds.dataset(store, format="parquet", partitioning="hive", schema=schema).to_table()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """With ``EDGE_AGENT_FAIL_ON_SKIP=1`` (CI sets it) a skipped test fails: a test that
    needs root, a service or a tool must run there, not pass by skipping."""
    outcome = yield
    report = outcome.get_result()
    strict = os.environ.get("EDGE_AGENT_FAIL_ON_SKIP") == "1"
    if strict and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but EDGE_AGENT_FAIL_ON_SKIP=1: {report.longrepr}"
