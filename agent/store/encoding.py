"""Batches as bytes: what the spool stores and what goes on the wire.

One format everywhere: a Parquet file, zstd-compressed, whose key-value metadata carries
the batch's identity (``edge_agent.*``), so any bytes can be turned back into the same
:class:`Batch`, lineage aside: that is named by its digest and kept once beside the data
(:mod:`agent.store.lineage`). Every choice below was measured on the simulator mix
(``python bench/bench_wire.py --columns``, BENCHMARKS.md issue 17), where a 1 s batch is
480 points and every 100 bytes of a file are 0.2 B/point:

- every file has every column, so that a dataset has one schema: a reader that takes
  it from the first file (a pyarrow dataset, DuckDB and Spark by default) sees every
  column of every file. A column with no value in the batch (``text``, the device stamps
  of sources that have none) is written uncompressed: about 95 bytes, 0.06 B/point at
  10 s windows, which leaving it out would save at the price of columns that silently
  vanish from such reads;
- no dictionary encoding: plain strings under zstd were smaller than a dictionary page
  plus indices for ``source`` and ``tag`` (434 vs 746 bytes for the 48 names at 1 s), and
  for the few ``quality`` words; ``time`` delta-encoded;
- no statistics: 44 bytes a file for ``time``'s min/max, while files are named, found and
  skipped by their window;
- zstd levels per column (:data:`LEVELS`): 19 for ``value``, ``tag`` and ``time`` (6 %,
  10 % and 30 % smaller than the default 3 at 10 s windows, for about 3 ms more a 10 s
  batch; 22 saved 0.2 % more for 8x the time), 3 for ``source`` and ``quality``, which no
  level made smaller; brotli was 10 % smaller again on ``value``, but stock Spark cannot
  read it;
- metadata: the lineage by digest, the quality figures as zstd'd JSON in base64, and what
  other keys give (ISO window bounds, the point count) left out; :func:`expand` restores
  the full set (:data:`META_ORDER`) for every reader.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from agent.store.lineage import lineage_digest
from agent.windows.batch import META_PREFIX, SCHEMA, Batch, iso_time

MEDIA_TYPE = "application/vnd.apache.parquet"
LEVELS = {"time": 19, "source": 3, "tag": 19, "value": 19, "quality": 3}
_DELTA = {"time": "DELTA_BINARY_PACKED"}
_OPTIONAL = ("text", "source_time", "server_time", "received_time")
# the in-memory metadata of a batch, in the order the Batcher writes it
META_ORDER = (
    "gateway_id",
    "batch_id",
    "window_start",
    "window_end",
    "window_start_ns",
    "window_end_ns",
    "config_hash",
    "points",
    "tags",
    "lineage",
    "quality",
)
_DERIVED = frozenset({"window_start", "window_end", "points", "tags", "quality"})
_PACKED_QUALITY = "quality_zstd"

Resolver = Callable[[str], str | None]
"""The lineage record of a digest, or None where it is not known."""


def encode(
    table: pa.Table,
    compression: str = "zstd",
    level: int | None = None,
    inline_lineage: bool = False,
) -> bytes:
    """Parquet bytes of a batch table. The metadata goes into the file's key-value
    metadata once (no serialised Arrow schema: it would repeat it). With
    ``inline_lineage`` the record travels in the file too (``edge_agent.tags``), for a
    receiver that may not have it yet."""
    sink = pa.BufferOutputStream()
    plain = table.replace_schema_metadata(None)
    delta = {name: kind for name, kind in _DELTA.items() if name in plain.column_names}
    codecs: str | dict[str, str] | None = None if compression == "none" else compression
    levels: int | dict[str, int] | None = level
    if compression == "zstd" and level is None:
        empty = {n for n in _OPTIONAL if n in plain.column_names and _all_null(plain[n])}
        codecs = {n: "none" if n in empty else "zstd" for n in plain.column_names}
        levels = {n: LEVELS.get(n, 19) for n in plain.column_names if n not in empty}
    writer = pq.ParquetWriter(
        sink,
        plain.schema,
        store_schema=False,
        compression=codecs,
        compression_level=levels,
        use_dictionary=False,
        column_encoding=delta or None,
        write_statistics=False,
    )
    writer.write_table(plain)
    raw = table.schema.metadata or {}
    stored = _packed({k.decode(): v.decode() for k, v in raw.items()}, inline_lineage)
    if stored:
        writer.add_key_value_metadata(stored)
    writer.close()
    return bytes(sink.getvalue())


def _all_null(column: pa.ChunkedArray) -> bool:
    return column.null_count == len(column)


def _packed(metadata: Mapping[str, str], inline_lineage: bool = False) -> dict[str, str]:
    """The key-value metadata a file stores for a batch's in-memory metadata."""
    out: dict[str, str] = {}
    for key, value in metadata.items():
        name = key.removeprefix(META_PREFIX)
        if key == name or name not in _DERIVED:
            out[key] = value
    tags = metadata.get(f"{META_PREFIX}tags")
    if tags is not None:
        out[f"{META_PREFIX}lineage"] = lineage_digest(tags)
        if inline_lineage:
            out[f"{META_PREFIX}tags"] = tags
    quality = metadata.get(f"{META_PREFIX}quality")
    if quality is not None:
        text = quality.encode()
        squeezed = base64.b64encode(pa.compress(text, "zstd", asbytes=True)).decode()
        out[f"{META_PREFIX}{_PACKED_QUALITY}"] = f"{len(text)}:{squeezed}"  # size: to unpack
    return out


def expand(stored: Mapping[str, str], rows: int, lineage: Resolver | None = None) -> dict[str, str]:
    """The in-memory metadata of a batch from what its file stores (this encoding's or an
    older one's, which stored everything): derived keys computed, the quality figures
    unpacked, the lineage record looked up by its digest where ``lineage`` knows it."""
    meta = {k.removeprefix(META_PREFIX): v for k, v in stored.items() if k.startswith(META_PREFIX)}
    for bound in ("start", "end"):
        if f"window_{bound}" not in meta and f"window_{bound}_ns" in meta:
            meta[f"window_{bound}"] = iso_time(int(meta[f"window_{bound}_ns"]))
    meta.setdefault("points", str(rows))
    packed_quality = meta.pop(_PACKED_QUALITY, None)
    if packed_quality is not None:
        size, _, squeezed = packed_quality.partition(":")
        text = pa.decompress(base64.b64decode(squeezed), int(size), "zstd", asbytes=True)
        meta["quality"] = text.decode()
    if "tags" in meta:
        meta.setdefault("lineage", lineage_digest(meta["tags"]))
    elif "lineage" in meta and lineage is not None:
        record = lineage(meta["lineage"])
        if record is not None:
            meta["tags"] = record
    ordered = {key: meta.pop(key) for key in META_ORDER if key in meta}
    out = {f"{META_PREFIX}{key}": value for key, value in (ordered | meta).items()}
    out.update({k: v for k, v in stored.items() if not k.startswith(META_PREFIX)})
    return out


def lineage_of(table: pa.Table) -> tuple[str, str] | None:
    """(digest, record) of a batch table that has its lineage record at hand."""
    raw = table.schema.metadata or {}
    record = raw.get(f"{META_PREFIX}tags".encode())
    if record is None:
        return None
    text = record.decode()
    return lineage_digest(text), text


def encoded(batch: Batch) -> bytes:
    """The batch's bytes in the default encoding: those it carries, or freshly made."""
    return batch.data if batch.data is not None else encode(batch.table)


def decode(data: bytes, lineage: Resolver | None = None) -> pa.Table:
    """The batch table of :func:`encode` bytes: every column of SCHEMA (any a foreign
    file lacks as nulls), ``source`` and ``tag`` dictionary-typed again, and the in-memory
    metadata (:func:`expand`)."""
    file = pq.ParquetFile(pa.BufferReader(data), read_dictionary=["source", "tag"])
    return _complete(file.read(use_threads=False), lineage)


def _complete(table: pa.Table, lineage: Resolver | None = None) -> pa.Table:
    """A table read from a batch file as the batch had it (see :func:`decode`)."""
    raw = table.schema.metadata or {}
    stored = {k.decode(): v.decode() for k, v in raw.items()}
    columns = [
        table[field.name] if field.name in table.column_names else pa.nulls(len(table), field.type)
        for field in SCHEMA
    ]
    metadata = expand(stored, table.num_rows, lineage)
    return pa.Table.from_arrays(columns, schema=SCHEMA.with_metadata(metadata))


def batch_of(table: pa.Table, data: bytes | None = None) -> Batch:
    """The Batch a decoded table stands for, from its ``edge_agent.*`` metadata; ``data``
    are the bytes it was decoded from, kept so that no uplink encodes it again."""
    raw = table.schema.metadata or {}
    meta = {k.decode(): v.decode() for k, v in raw.items() if k.startswith(META_PREFIX.encode())}

    def field(name: str) -> str:
        try:
            return meta[f"{META_PREFIX}{name}"]
        except KeyError:
            raise ValueError(f"not an edge-agent batch: no {META_PREFIX}{name}") from None

    quality = meta.get(f"{META_PREFIX}quality")
    figures: dict[str, Any] | None = json.loads(quality) if quality is not None else None
    return Batch(
        field("batch_id"),
        field("gateway_id"),
        int(field("window_start_ns")),
        int(field("window_end_ns")),
        table,
        figures,
        data,
    )
