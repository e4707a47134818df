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

from agent.batch import Batch
from agent.config import ParquetUplinkConfig
from agent.encoding import encode


def batch_path(batch: Batch) -> str:
    """Relative path of a batch inside the dataset."""
    return f"gateway={batch.gateway_id}/date={batch.date}/{batch.batch_id}.parquet"


class ParquetUplink:
    def __init__(self, config: ParquetUplinkConfig) -> None:
        self.name = config.name
        self.config = config
        self.s3 = config.is_s3
        if self.s3:
            self.filesystem: pafs.FileSystem = s3_filesystem(config)
            self.root = config.path.removeprefix("s3://").strip("/")
        else:
            location = config.path
            if "://" not in location:
                location = Path(location).expanduser().resolve().as_uri()
            self.filesystem, self.root = pafs.FileSystem.from_uri(location)
        self.local = isinstance(self.filesystem, pafs.LocalFileSystem)

    async def send(self, batch: Batch) -> None:
        await asyncio.to_thread(self._write, batch)

    def _write(self, batch: Batch) -> None:
        relative = batch_path(batch)
        final = f"{self.root}/{relative}"
        data = encode(batch.table, self.config.compression, self.config.compression_level)
        if self.s3:
            with self.filesystem.open_output_stream(final) as stream:
                stream.write(data)
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
