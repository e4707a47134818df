"""The postgres uplink on the local PostgreSQL, alone and behind ``edge-agent collect``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from agent.config.model import MqttUplinkConfig, PostgresUplinkConfig
from agent.uplinks import make_uplink
from agent.uplinks.mqtt import MqttUplink
from agent.uplinks.postgres import PostgresUplink
from simulators.mqtt_broker import PrivateBroker
from tests.uplinks.conftest import PgSchema
from tests.uplinks.helpers import (
    COLUMNS,
    canonical,
    collect_config,
    make_batches,
    running,
    samples_of,
    wait_for,
)


def postgres(schema: PgSchema, **extra: Any) -> PostgresUplink:
    made = make_uplink(PostgresUplinkConfig.model_validate(schema.store(**extra)))
    assert isinstance(made, PostgresUplink)
    return made


async def query(schema: PgSchema, text: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(schema.dsn) as connection:
        cursor = await connection.execute(text.replace("{schema}", f'"{schema.name}"'))
        return await cursor.fetchall() if cursor.description is not None else []


async def stored_samples(schema: PgSchema) -> pa.Table:
    rows = await query(schema, f"SELECT {', '.join(COLUMNS)} FROM {{schema}}.samples")
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in COLUMNS]
    return canonical(
        pa.table(
            {
                "time": pa.array(columns[0], pa.timestamp("us", tz="UTC")),
                "source": pa.array(columns[1], pa.string()),
                "tag": pa.array(columns[2], pa.string()),
                "value": pa.array(columns[3], pa.float64()),
                "quality": pa.array(columns[4], pa.int32()),
                "text": pa.array(columns[5], pa.string()),
            }
        )
    )


async def test_batches_are_copied_once_with_their_batch_rows(pg_schema: PgSchema) -> None:
    batches = make_batches(windows=4)
    uplink = postgres(pg_schema)
    for batch in batches:
        await uplink.send(batch)
    await uplink.send(batches[1])  # the resend after a lost commit acknowledgement
    await uplink.close()
    again = postgres(pg_schema)  # a new process: the batches table still knows
    await again.send(batches[3])
    await again.close()
    assert uplink.duplicates == 1
    assert again.duplicates == 1
    assert (await stored_samples(pg_schema)).equals(samples_of(batches))
    rows = await query(
        pg_schema, "SELECT batch_id, gateway, points FROM {schema}.batches ORDER BY batch_id"
    )
    assert rows == [(b.batch_id, "gw1", b.points) for b in batches]
    windows = await query(
        pg_schema, "SELECT min(window_start), max(window_end) FROM {schema}.batches"
    )
    assert windows[0][0].timestamp() * 1e9 == batches[0].window_start_ns
    assert windows[0][1].timestamp() * 1e9 == batches[-1].window_end_ns


async def test_each_lineage_record_is_stored_once_and_every_batch_names_it(
    pg_schema: PgSchema,
) -> None:
    await query(pg_schema, "CREATE SCHEMA IF NOT EXISTS {schema}")
    await query(  # the batches table as made before issue 17: it gains the column
        pg_schema,
        "CREATE TABLE {schema}.batches (batch_id text PRIMARY KEY, gateway text NOT NULL,"
        " window_start timestamptz NOT NULL, window_end timestamptz NOT NULL,"
        " points integer NOT NULL, written_at timestamptz NOT NULL DEFAULT now())",
    )
    batches = make_batches(windows=3)
    uplink = postgres(pg_schema)
    for batch in batches:
        await uplink.send(batch)
    await uplink.close()
    again = postgres(pg_schema)  # a new process sends a batch again: still one record
    await again.send(batches[0])
    await again.close()
    assert len(await query(pg_schema, "SELECT digest FROM {schema}.lineage")) == 1
    rows = await query(
        pg_schema,
        "SELECT b.batch_id, l.record FROM {schema}.batches b"
        " JOIN {schema}.lineage l ON l.digest = b.lineage ORDER BY 1",
    )
    expected = [json.loads((b.table.schema.metadata or {})[b"edge_agent.tags"]) for b in batches]
    assert rows == list(zip([b.batch_id for b in batches], expected, strict=True))


async def test_a_failed_copy_rolls_back_the_batch_row_too(pg_schema: PgSchema) -> None:
    batch = make_batches(windows=1)[0]
    uplink = postgres(pg_schema)
    await uplink.send(make_batches(windows=1, gateway="other")[0])  # creates the tables
    await query(
        pg_schema, "ALTER TABLE {schema}.samples ADD CONSTRAINT no_gw1 CHECK (gateway <> 'gw1')"
    )
    with pytest.raises(psycopg.errors.CheckViolation):
        await uplink.send(batch)
    await query(pg_schema, "ALTER TABLE {schema}.samples DROP CONSTRAINT no_gw1")
    await uplink.send(batch)  # the same connection goes on; the batch is written now
    await uplink.close()
    assert uplink.duplicates == 0
    gateways = await query(pg_schema, "SELECT gateway, count(*) FROM {schema}.batches GROUP BY 1")
    assert sorted(gateways) == [("gw1", 1), ("other", 1)]


async def test_unreachable_database_raises_and_the_next_send_connects(pg_schema: PgSchema) -> None:
    batch = make_batches(windows=1)[0]
    down = postgres(pg_schema, dsn="postgresql://postgres@127.0.0.1:1/test", connect_timeout="1s")
    with pytest.raises(psycopg.OperationalError):
        await down.send(batch)
    uplink = postgres(pg_schema)
    await uplink.send(batch)
    await uplink.close()
    assert (await stored_samples(pg_schema)).equals(samples_of([batch]))


async def test_password_comes_from_the_environment(
    pg_schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_TEST_PG_PASSWORD", "unused-with-trust-auth")
    uplink = postgres(pg_schema, username="postgres", password_env="EDGE_TEST_PG_PASSWORD")
    await uplink.send(make_batches(windows=1)[0])
    await uplink.close()
    assert await query(pg_schema, "SELECT count(*) FROM {schema}.batches") == [(1,)]


async def test_mqtt_uplink_and_two_collectors_into_postgres_store_every_sample_once(
    mqtt_broker: PrivateBroker, pg_schema: PgSchema
) -> None:
    batches = make_batches(windows=5, gateway="gw1") + make_batches(windows=5, gateway="gw2")
    store = pg_schema.store()
    first = collect_config(mqtt_broker.url, store, "c1")
    second = collect_config(mqtt_broker.url, store, "c2")
    async with running(first) as one, running(second) as two:
        sender = make_uplink(MqttUplinkConfig(url=mqtt_broker.url))
        assert isinstance(sender, MqttUplink)
        for batch in batches:
            await sender.send(batch)
        await sender.send(batches[0])  # a resend: one collector finds it stored already
        await wait_for(lambda: one.batches + two.batches == len(batches) + 1)
        await asyncio.sleep(0.2)
        await sender.close()
    assert one.batches > 0
    assert two.batches > 0
    duplicates = [c.store.duplicates for c in (one, two)]  # type: ignore[attr-defined]
    assert sum(duplicates) == 1
    assert (await stored_samples(pg_schema)).equals(samples_of(batches))
    assert await query(pg_schema, "SELECT count(*) FROM {schema}.batches") == [(len(batches),)]
