"""The ``parquet`` uplink: a Hive-partitioned dataset any lakehouse engine can read.

Layout: ``<path>/gateway=<id>/date=<yyyy-mm-dd>/<batch_id>.parquet``. Each file is written
under a hidden temporary name and renamed into place, so readers never see a partial file
and a resend of the same batch id replaces the file instead of adding a duplicate.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

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
        directory, _, filename = final.rpartition("/")
        temporary = f"{directory}/.{filename}.tmp"
        self.filesystem.create_dir(directory, recursive=True)
        data = encode(batch.table, self.config.compression, self.config.compression_level)
        with self.filesystem.open_output_stream(temporary) as stream:
            stream.write(data)
        if self.local:
            fd = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.filesystem.move(temporary, final)
