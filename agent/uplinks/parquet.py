"""The ``parquet`` uplink: a Hive-partitioned dataset any lakehouse engine can read.

Layout: ``<path>/gateway=<id>/date=<yyyy-mm-dd>/<batch_id>.parquet``. Each file is written
under a hidden temporary name and renamed into place, so readers never see a partial file
and a resend of the same batch id replaces the file instead of adding a duplicate.

On S3-compatible storage (``path = "s3://bucket/prefix"``, ``endpoint`` for anything but
AWS) each batch is one PUT of the whole object: an object store shows an object whole or
not at all, so no temporary name is needed, and the same batch id again overwrites the
same key.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from agent.config.model import ParquetUplinkConfig
from agent.store.encoding import encode, encoded
from agent.windows.batch import Batch


def batch_path(batch: Batch) -> str:
    """Relative path of a batch inside the dataset."""
    return f"gateway={batch.gateway_id}/date={batch.date}/{batch.batch_id}.parquet"


class ParquetUplink:
    def __init__(self, config: ParquetUplinkConfig) -> None:
        self.name = config.name
        self.config = config
        self._s3: pafs.FileSystem | None = None  # made at the first write (see _put)
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
        relative = batch_path(batch)
        final = f"{self.root}/{relative}"
        if self.config.compression == "zstd" and self.config.compression_level is None:
            data = encoded(batch)  # the spool's bytes, when the batch came from there
        else:
            data = encode(batch.table, self.config.compression, self.config.compression_level)
        if self.config.is_s3:
            self._put(final, data)
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
