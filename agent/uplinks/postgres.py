"""The ``postgres`` uplink: samples COPYed into PostgreSQL, idempotent by batch id.

Tables (created on first connection if absent, in ``db_schema``)::

    samples(time timestamptz, gateway text, source text, tag text,
            value double precision, quality integer, text text)
    batches(batch_id text primary key, gateway text, window_start timestamptz,
            window_end timestamptz, points integer, written_at timestamptz, lineage text)
    lineage(digest text primary key, record jsonb)

A batch row names its lineage record by digest (:mod:`agent.store.lineage`); each record
is inserted once, in the transaction of the first batch this uplink writes that carries it
(``SELECT b.batch_id, l.record FROM batches b JOIN lineage l ON l.digest = b.lineage``).

``samples`` becomes a TimescaleDB hypertable when the extension is installed in the
database (or can be installed); without it the tables are plain and nothing fails.

Each batch is one transaction: the batch id goes into ``batches`` with ``ON CONFLICT DO
NOTHING``; if the row was there already, this batch was written before (a resend after a
lost acknowledgement, or a redelivery to a collector) and nothing else is written;
otherwise the samples are COPYed and the transaction commits both. ``send`` returns after
the commit. The COPY payload is CSV written by Arrow's C++ CSV writer from the batch's
columns, so no Python code runs per sample. Timestamps are stored to the microsecond,
PostgreSQL's resolution.

psycopg 3 is an optional dependency (the ``postgres`` extra), imported when first used; the
config model refuses a postgres uplink without it, saying how to install it. Its async API
keeps the event loop free.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv
import structlog

from agent.config.model import PostgresUplinkConfig
from agent.store.encoding import lineage_of
from agent.uplinks import RejectedBatch
from agent.windows.batch import META_PREFIX, Batch

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

log = structlog.get_logger("edge_agent.uplinks.postgres")

_COLUMNS = ("time", "gateway", "source", "tag", "value", "quality", "text")
_SETUP_LOCK = 0x6564_6765  # advisory lock key: two writers creating the tables at once


def copy_csv(batch: Batch) -> bytes:
    """The batch's samples as COPY ... (FORMAT csv) input, columns in ``_COLUMNS`` order.

    Arrow quotes every string and leaves nulls unquoted and empty, which is exactly how
    PostgreSQL's CSV format tells an empty text from NULL.
    """
    table = batch.table
    gateway = pa.nulls(table.num_rows, pa.string()).fill_null(batch.gateway_id)
    columns = [
        table.column("time"),
        gateway,
        table.column("source").cast(pa.string()),
        table.column("tag").cast(pa.string()),
        table.column("value"),
        table.column("quality").cast(pa.int32()),
        table.column("text"),
    ]
    sink = io.BytesIO()
    pacsv.write_csv(
        pa.Table.from_arrays(columns, names=list(_COLUMNS)),
        sink,
        pacsv.WriteOptions(include_header=False),
    )
    return sink.getvalue()


def _utc(ns: int) -> dt.datetime:
    seconds, rest = divmod(ns, 1_000_000_000)
    return dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(microseconds=rest // 1000)


class PostgresUplink:
    def __init__(self, config: PostgresUplinkConfig) -> None:
        self.name = config.name
        self.config = config
        self.duplicates = 0  # batches found already written (resends), for logs and tests
        self._connection: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._lock = asyncio.Lock()
        self._recorded: set[str] = set()  # lineage digests known to be in the lineage table

    async def send(self, batch: Batch) -> None:
        import psycopg

        async with self._lock:
            connection = await self._connected()
            try:
                await self._write(connection, batch)
            except psycopg.errors.DataError as exc:
                # SQLSTATE class 22 (a value the column cannot hold): this batch's content,
                # not the connection; the same rows would fail again
                raise RejectedBatch(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                if connection.closed or connection.broken:
                    self._connection = None
                raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _write(
        self, connection: psycopg.AsyncConnection[tuple[object, ...]], batch: Batch
    ) -> None:
        from psycopg import sql

        schema = sql.Identifier(self.config.db_schema)
        digest = (batch.table.schema.metadata or {}).get(f"{META_PREFIX}lineage".encode())
        lineage = lineage_of(batch.table)
        recording = lineage is not None and lineage[0] not in self._recorded
        async with connection.transaction():
            if lineage is not None and recording:
                await connection.execute(
                    sql.SQL(
                        "INSERT INTO {}.lineage (digest, record) VALUES (%s, %s)"
                        " ON CONFLICT (digest) DO NOTHING"
                    ).format(schema),
                    lineage,
                )
            cursor = await connection.execute(
                sql.SQL(
                    "INSERT INTO {}.batches (batch_id, gateway, window_start, window_end, points,"
                    " written_at, lineage) VALUES (%s, %s, %s, %s, %s, now(), %s)"
                    " ON CONFLICT (batch_id) DO NOTHING RETURNING batch_id"
                ).format(schema),
                (
                    batch.batch_id,
                    batch.gateway_id,
                    _utc(batch.window_start_ns),
                    _utc(batch.window_end_ns),
                    batch.points,
                    digest.decode() if digest is not None else None,
                ),
            )
            if await cursor.fetchone() is None:
                self.duplicates += 1
                log.debug("batch already stored", batch_id=batch.batch_id)
            else:
                data = await asyncio.to_thread(copy_csv, batch)  # only now: a resend costs none
                copy = sql.SQL("COPY {}.samples ({}) FROM STDIN (FORMAT csv)").format(
                    schema, sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
                )
                async with connection.cursor() as copy_cursor, copy_cursor.copy(copy) as stream:
                    await stream.write(data)
        if lineage is not None and recording:  # committed: a failure raised before here
            self._recorded.add(lineage[0])

    async def _connected(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        import psycopg

        config = self.config
        password = config.password() if config.username is not None else None
        connection = await psycopg.AsyncConnection.connect(
            config.dsn,
            user=config.username,
            password=password,
            connect_timeout=max(1, round(config.connect_timeout / 1e9)),
            autocommit=True,  # transactions are explicit: one per batch
        )
        try:
            await self._create_tables(connection)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        return connection

    async def _create_tables(self, connection: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        from psycopg import sql

        schema = sql.Identifier(self.config.db_schema)
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
            await connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            await connection.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.samples (time timestamptz NOT NULL,"
                    " gateway text NOT NULL, source text NOT NULL, tag text NOT NULL,"
                    " value double precision, quality integer NOT NULL, text text)"
                ).format(schema)
            )
            await connection.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.batches (batch_id text PRIMARY KEY,"
                    " gateway text NOT NULL, window_start timestamptz NOT NULL,"
                    " window_end timestamptz NOT NULL, points integer NOT NULL,"
                    " written_at timestamptz NOT NULL DEFAULT now())"
                ).format(schema)
            )
            await connection.execute(  # a table made before issue 17 gains the column
                sql.SQL("ALTER TABLE {}.batches ADD COLUMN IF NOT EXISTS lineage text").format(
                    schema
                )
            )
            await connection.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.lineage (digest text PRIMARY KEY,"
                    " record jsonb NOT NULL)"
                ).format(schema)
            )
            await self._hypertable(connection, schema)

    async def _hypertable(
        self, connection: psycopg.AsyncConnection[tuple[object, ...]], schema: sql.Identifier
    ) -> None:
        """Make samples a hypertable if TimescaleDB is there; never fail without it."""
        import psycopg
        from psycopg import sql

        cursor = await connection.execute(
            "SELECT installed_version FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        row = await cursor.fetchone()
        if row is None:
            return
        if row[0] is None:
            try:
                async with connection.transaction():  # a savepoint: a refusal is not fatal
                    await connection.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            except psycopg.Error as exc:
                log.info("timescaledb not installed; samples stays a plain table", error=str(exc))
                return
        samples = sql.SQL("{}.samples").format(schema).as_string(connection)
        await connection.execute(
            "SELECT create_hypertable(%s, 'time', if_not_exists => TRUE, migrate_data => TRUE)",
            (samples,),
        )
