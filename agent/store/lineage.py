"""Lineage records by content address: a batch file names its lineage, the store keeps it.

The per-tag lineage of a batch (``edge_agent.tags``: rate, unit, every processing
parameter of the tags present) is the same window after window, and at 1 s windows it
was a third of a file's bytes. A file therefore carries only its digest
(``edge_agent.lineage``: the first :data:`DIGEST_HEX` hex digits of the SHA-256 of the
record's exact bytes), and each record is kept once beside the data: the spool's
``lineage`` table, ``<dataset>/_lineage/<digest>.json`` of the parquet uplink (a name
starting with ``_`` that Spark, pyarrow and DuckDB globs over ``*.parquet`` pass over), and
the first batch of each digest on an MQTT connection carries the record inline for the
collector. Anyone can check a record against its name: ``sha256(bytes)[:24] == digest``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq

DIGEST_HEX = 24  # 96 bits: no two records of a dataset's life meet by chance
LINEAGE_DIR = "_lineage"


def lineage_digest(record: str) -> str:
    """The content address of a lineage record (its JSON text as the batch had it)."""
    return hashlib.sha256(record.encode()).hexdigest()[:DIGEST_HEX]


def record_path(digest: str) -> str:
    """Where a dataset keeps a record, relative to its root."""
    return f"{LINEAGE_DIR}/{digest}.json"


class LineageFolder:
    """The records of a local dataset, found from a file's folder upwards (the dataset's
    root may be the folder the reader was given or any parent of the Hive partitions),
    each read once."""

    def __init__(self) -> None:
        self._records: dict[str, str] = {}

    def find(self, file: str, digest: str) -> str | None:
        """The record of ``digest`` for the batch file ``file``, or None if no
        ``_lineage`` folder above it holds it."""
        record = self._records.get(digest)
        if record is not None:
            return record
        for folder in Path(file).resolve().parents:
            candidate = folder / record_path(digest)
            if candidate.is_file():
                record = candidate.read_bytes().decode(errors="replace")
                if lineage_digest(record) != digest:
                    return None  # damaged or foreign: no lineage rather than a wrong one
                self._records[digest] = record
                return record
        return None


def file_lineage(path: str | Path, folder: LineageFolder | None = None) -> str | None:
    """The lineage record of one stored batch file: inline (``edge_agent.tags``: an older
    file, or one that carried it), else found by its digest (``edge_agent.lineage``) in a
    ``_lineage`` folder above it; None if neither."""
    meta = pq.read_metadata(path).metadata or {}
    inline = meta.get(b"edge_agent.tags")
    if inline is not None:
        return inline.decode()
    digest = meta.get(b"edge_agent.lineage")
    if digest is None:
        return None
    return (folder or LineageFolder()).find(str(path), digest.decode())
