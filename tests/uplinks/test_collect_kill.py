"""``edge-agent collect`` SIGKILLed while batches stream in, then started again with the
same client id: its persistent session brings back whatever it had not acknowledged, and
PostgreSQL ends up with every batch exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from agent.config.model import MqttUplinkConfig
from agent.uplinks.mqtt import MqttUplink
from simulators.mqtt_broker import PrivateBroker
from tests.uplinks.conftest import PgSchema
from tests.uplinks.helpers import make_batches, samples_of
from tests.uplinks.test_postgres import query, stored_samples

pytestmark = pytest.mark.slow


async def start_collector(config: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.commands.cli", "collect", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    while b'"collecting"' not in await asyncio.wait_for(process.stdout.readline(), 20):
        pass
    return process


async def stored_batches(schema: PgSchema) -> int:
    try:
        rows = await query(schema, "SELECT count(*) FROM {schema}.batches")
    except Exception:  # the collector has not created the tables yet
        return 0
    return int(rows[0][0])


async def test_sigkilled_collector_loses_and_duplicates_nothing(
    mqtt_broker: PrivateBroker, pg_schema: PgSchema, tmp_path: Path
) -> None:
    batches = make_batches(windows=24, per_tag=1500)  # 6000 samples each: writes take a while
    config = tmp_path / "collect.toml"
    config.write_text(
        f'log_format = "json"\n[broker]\nurl = "{mqtt_broker.url}"\nclient_id = "k1"\n'
        f'max_inflight = 8\n[store]\ntype = "postgres"\ndsn = "{pg_schema.dsn}"\n'
        f'db_schema = "{pg_schema.name}"\n'
    )
    process = await start_collector(config)
    sender = MqttUplink(MqttUplinkConfig(url=mqtt_broker.url))
    for batch in batches:
        await sender.send(batch)
    await sender.close()
    before = 0
    while before < 3:
        before = await stored_batches(pg_schema)
        await asyncio.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    await process.wait()
    killed_at = await stored_batches(pg_schema)
    assert killed_at < len(batches), "the kill came too late to test anything"

    process = await start_collector(config)
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while await stored_batches(pg_schema) < len(batches):
            assert asyncio.get_running_loop().time() < deadline, "batches missing"
            await asyncio.sleep(0.05)
    finally:
        process.terminate()
        output, _ = await process.communicate()
    stopped = [json.loads(line) for line in output.splitlines() if b"collector stopped" in line]
    assert stopped[0]["batches"] >= len(batches) - killed_at  # redelivered and written
    assert (await stored_samples(pg_schema)).equals(samples_of(batches))
    assert await stored_batches(pg_schema) == len(batches)
