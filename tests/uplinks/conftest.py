"""Fixtures of the uplink tests: a throwaway PostgreSQL schema and an S3-compatible server.

PostgreSQL tests use the local server (``EDGE_AGENT_TEST_POSTGRES_DSN``, default
``postgresql://postgres@127.0.0.1:5432/test``); without one they skip, unless
``EDGE_AGENT_REQUIRE_POSTGRES=1`` (CI sets it), where a missing server fails them. The S3
tests start moto's server (the ``moto[server]`` test extra) on a free port, and skip
when it is not installed. The mqtt uplink and the collector speak MQTT 5 only, so here
``mqtt_broker`` skips on a broker without it (amqtt).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from simulators.mqtt_broker import Feature, PrivateBroker, free_port


@pytest.fixture
def mqtt_broker(mqtt_broker: PrivateBroker) -> PrivateBroker:
    """The plugin's private broker, where it speaks MQTT 5 as the uplink and collector do."""
    reason = mqtt_broker.lacks(Feature.MQTT5)
    if reason is not None:
        pytest.skip(reason)
    return mqtt_broker


POSTGRES_DSN = os.environ.get(
    "EDGE_AGENT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@dataclass(frozen=True)
class PgSchema:
    dsn: str
    name: str

    def store(self, **extra: Any) -> dict[str, Any]:
        return {"type": "postgres", "dsn": self.dsn, "db_schema": self.name, **extra}


@pytest_asyncio.fixture
async def pg_schema() -> AsyncIterator[PgSchema]:
    """A schema name no other test uses, dropped (with what the uplink made) afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        connection = await psycopg.AsyncConnection.connect(
            POSTGRES_DSN, autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        if os.environ.get("EDGE_AGENT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"EDGE_AGENT_REQUIRE_POSTGRES=1 but PostgreSQL is unreachable: {exc}")
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN}: {exc}")
    schema = f"edge_test_{uuid.uuid4().hex[:12]}"
    try:
        yield PgSchema(POSTGRES_DSN, schema)
    finally:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str = "testing-access"
    secret_key: str = "testing-secret"

    def filesystem(self) -> Any:
        from pyarrow.fs import S3FileSystem

        return S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint.removeprefix("http://"),
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1 and a free port, with an empty bucket (moto keeps its state
    per process, not per server: the bucket name is what keeps tests apart)."""
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = S3Server(f"http://127.0.0.1:{port}", f"central-{uuid.uuid4().hex[:12]}")
        s3.filesystem().create_dir(s3.bucket)
        yield s3
    finally:
        server.stop()
