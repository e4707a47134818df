"""The ``parquet`` uplink: a Hive-partitioned dataset any lakehouse engine can read.

Layout: ``<path>/gateway=<id>/date=<yyyy-mm-dd>/<batch_id>.parquet``. Each file is written
under a hidden temporary name and renamed into place, so readers never see a partial file
and a resend of the same batch id replaces the file instead of adding a duplicate.

On S3-compatible storage (``path = "s3://bucket/prefix"``, ``endpoint`` for anything but
AWS) each batch is one PUT of the whole object: an object store shows an object whole or
not at all, so no temporary name is needed, and the same batch id again overwrites the
same key.

Lineage records (:mod:`agent.store.lineage`) go to ``<path>/_lineage/<digest>.json``, each
written before the first batch file naming it, the same way (temporary name and rename, or
one PUT), and then remembered: a file already there is not written again.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from agent.config.model import ParquetUplinkConfig
from agent.store.encoding import encode, encoded, lineage_of
from agent.store.lineage import record_path
from agent.windows.batch import SCHEMA, Batch

DATASET_SCHEMA = pa.schema(
    [pa.field(f.name, pa.string()) if pa.types.is_dictionary(f.type) else f for f in SCHEMA]
    + [pa.field("gateway", pa.string()), pa.field("date", pa.string())]
)
"""A dataset's schema with its Hive partition columns, ``source`` and ``tag`` as plain
strings (``pyarrow.dataset.dataset(path, partitioning="hive", schema=DATASET_SCHEMA)``):
every file has every column, so this is what a reader infers too, dictionaries aside."""


def batch_path(batch: Batch) -> str:
    """Relative path of a batch inside the dataset."""
    return f"gateway={batch.gateway_id}/date={batch.date}/{batch.batch_id}.parquet"


class ParquetUplink:
    def __init__(self, config: ParquetUplinkConfig) -> None:
        self.name = config.name
        self.config = config
        self._s3: pafs.FileSystem | None = None  # made at the first write (see _put)
        self._recorded: set[str] = set()  # lineage digests known to be in the store
        if config.is_s3:
            self.root = config.path.removeprefix("s3://").strip("/")
            return
        location = config.path
        if "://" not in location:
            location = Path(location).expanduser().resolve().as_uri()
        self.filesystem, self.root = pafs.FileSystem.from_uri(location)
        self.local = isinstance(self.filesystem, pafs.LocalFileSystem)

    async def send(self, batch: Batch) -> None:
        await asyncio.to_thread(self._write, batch)

    async def close(self) -> None:
        """Nothing held open between writes."""

    def _write(self, batch: Batch) -> None:
        if self.config.compression == "zstd" and self.config.compression_level is None:
            data = encoded(batch)  # the spool's bytes, when the batch came from there
        else:
            data = encode(batch.table, self.config.compression, self.config.compression_level)
        lineage = lineage_of(batch.table)
        if lineage is not None and lineage[0] not in self._recorded:
            self._store(record_path(lineage[0]), lineage[1].encode(), keep=True)
            self._recorded.add(lineage[0])
        self._store(batch_path(batch), data)

    def _store(self, relative: str, data: bytes, keep: bool = False) -> None:
        """Write ``data`` whole under ``relative``; with ``keep``, not if a file is there
        (content-addressed: it holds the same bytes)."""
        final = f"{self.root}/{relative}"
        if self.config.is_s3:
            self._put(final, data)
            return
        if keep and self.filesystem.get_file_info(final).type == pafs.FileType.File:
            return
        directory, _, filename = final.rpartition("/")
        temporary = f"{directory}/.{filename}.tmp"
        self.filesystem.create_dir(directory, recursive=True)
        with self.filesystem.open_output_stream(temporary) as stream:
            stream.write(data)
        if self.local:
            fd = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.filesystem.move(temporary, final)

    def _put(self, key: str, data: bytes) -> None:
        """One PUT of the whole object. The keys are read at the first write, not at start:
        a missing secret is then a failed send, logged and retried, not a crashed agent."""
        if self._s3 is None:
            self._s3 = s3_filesystem(self.config)
        with self._s3.open_output_stream(key) as stream:
            stream.write(data)


def s3_filesystem(config: ParquetUplinkConfig) -> pafs.S3FileSystem:
    """The S3 filesystem of a config: its endpoint (any S3-compatible store), region and
    keys; without keys, pyarrow's default chain (environment, instance role)."""
    options: dict[str, object] = {}
    if config.endpoint is not None:
        endpoint = urlsplit(config.endpoint)
        options["endpoint_override"] = endpoint.netloc
        options["scheme"] = endpoint.scheme
    if config.region is not None:
        options["region"] = config.region
    keys = config.access_key()
    if keys is not None:
        options["access_key"], options["secret_key"] = keys
    return pafs.S3FileSystem(**options)
