"""Time-aligned batches: samples grouped into windows on the reference clock.

Windows are multiples of ``batch.window`` since the Unix epoch, so every gateway cuts the
same windows whatever its start time. A window is closed ``batch.lateness`` after its end;
samples that arrive for an already-closed window go into the next batch with the LATE
flag, never dropped. A batch is a long-form Arrow table ``time, source, tag, value,
quality, text`` sorted by tag then time, with the lineage a dataset needs in its schema
metadata. Work per batch is a few vectorised passes; nothing is done per sample in Python.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from agent import quality as q
from agent.config import SourceConfig
from agent.frame import Frame
from agent.pipeline import derived_tags, tag_lineage

META_PREFIX = "edge_agent."

SCHEMA = pa.schema(
    [
        pa.field("time", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("source", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("tag", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("quality", pa.uint16(), nullable=False),
        pa.field("text", pa.string()),
    ]
)


class TagTable:
    """All tags of all sources under one global index, with what each batch says of them."""

    def __init__(self, sources: Sequence[SourceConfig]) -> None:
        self.source_names = [source.name for source in sources]
        self.source_offset: list[int] = []
        names: list[str] = []
        owners: list[int] = []
        self.lineage: list[dict[str, Any]] = []
        for index, source in enumerate(sources):
            self.source_offset.append(len(names))
            tags = [(tag.name, tag_lineage(tag)) for tag in source.tags]
            for name, lineage in tags + derived_tags(source.tags, source.name):
                names.append(name)
                owners.append(index)
                self.lineage.append(lineage)
        self.tag_names = np.array(names, dtype=object)
        self.tag_source = np.array(owners, dtype=np.int32)
        self.qualified = [f"{self.source_names[o]}/{n}" for o, n in zip(owners, names, strict=True)]
        # '"source/tag":{...}' per tag, serialised once: batches join the present ones
        self.lineage_json = [
            f"{json.dumps(name)}:{json.dumps(lineage, separators=(',', ':'))}"
            for name, lineage in zip(self.qualified, self.lineage, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.tag_names)


@dataclass(frozen=True)
class Batch:
    """One closed window's samples, ready for the spool and the uplinks."""

    batch_id: str
    gateway_id: str
    window_start_ns: int
    window_end_ns: int
    table: pa.Table

    @property
    def points(self) -> int:
        return int(self.table.num_rows)

    @property
    def date(self) -> str:
        """UTC date of the window start, the partition a store files the batch under."""
        start = dt.datetime.fromtimestamp(self.window_start_ns / 1e9, tz=dt.UTC)
        return start.strftime("%Y-%m-%d")


def _iso(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest:09d}Z"


def batch_id_for(window_start_ns: int, digest: str) -> str:
    """``20261121T093000.000Z-<content hash>``: sorts by window, unique by content."""
    seconds, rest = divmod(window_start_ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}.{rest // 1_000_000:03d}Z-{digest}"


@dataclass(slots=True)
class _Rows:
    gtag: np.ndarray
    time: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    text: np.ndarray | None

    def take(self, index: np.ndarray) -> _Rows:
        return _Rows(
            self.gtag[index],
            self.time[index],
            self.value[index],
            self.quality[index],
            None if self.text is None else self.text[index],
        )

    @staticmethod
    def join(parts: Sequence[_Rows]) -> _Rows:
        if len(parts) == 1:
            return parts[0]
        text = None
        if any(p.text is not None for p in parts):
            text = np.concatenate(
                [
                    p.text if p.text is not None else np.full(len(p.gtag), None, object)
                    for p in parts
                ]
            )
        return _Rows(
            np.concatenate([p.gtag for p in parts]),
            np.concatenate([p.time for p in parts]),
            np.concatenate([p.value for p in parts]),
            np.concatenate([p.quality for p in parts]),
            text,
        )


class Batcher:
    """Accumulates frames and cuts them into aligned window batches."""

    def __init__(
        self,
        tags: TagTable,
        window_ns: int,
        lateness_ns: int,
        gateway_id: str,
        config_hash: str,
    ) -> None:
        self.tags = tags
        self.window_ns = window_ns
        self.lateness_ns = lateness_ns
        self.gateway_id = gateway_id
        self.config_hash = config_hash
        self._pending: list[_Rows] = []
        self._closed_until: int | None = None
        self.late_points = 0

    @property
    def pending_points(self) -> int:
        return sum(len(p.gtag) for p in self._pending)

    def add(self, source_index: int, frame: Frame) -> None:
        if not len(frame):
            return
        offset = self.tags.source_offset[source_index]
        self._pending.append(
            _Rows(frame.tag + offset, frame.time, frame.value, frame.quality, frame.text)
        )

    def close_due(self, now_ns: int) -> list[Batch]:
        """Close every window that ended at least ``lateness`` before ``now_ns``."""
        boundary = (now_ns - self.lateness_ns) // self.window_ns * self.window_ns
        if self._closed_until is not None and boundary <= self._closed_until:
            return []  # no new window is due: late rows wait for the next one anyway
        return self._close(boundary)

    def flush(self) -> list[Batch]:
        """Close every window that has data, e.g. on shutdown."""
        if not self._pending:
            return []
        latest = max(int(p.time.max()) for p in self._pending)
        boundary = latest // self.window_ns * self.window_ns + self.window_ns
        if self._closed_until is not None:  # late rows still waiting close the next window
            boundary = max(boundary, self._closed_until + self.window_ns)
        return self._close(boundary)

    def _close(self, boundary: int) -> list[Batch]:
        if not self._pending:
            self._advance(boundary)
            return []
        rows = _Rows.join(self._pending)
        window = rows.time // self.window_ns * self.window_ns
        due = window < boundary
        if not due.any():
            self._pending = [rows]
            self._advance(boundary)
            return []
        self._pending = [rows.take(~due)] if not due.all() else []
        closed = rows.take(due)
        window = window[due]
        late = (
            window < self._closed_until
            if self._closed_until is not None
            else np.zeros(len(window), bool)
        )
        starts = np.unique(window[~late])
        if not starts.size and self._closed_until is not None and boundary <= self._closed_until:
            # Only late rows and no window closes now: they wait for the next window's batch.
            self._pending.append(closed)
            return []
        self._advance(boundary)
        batches: list[Batch] = []
        for start in starts[:-1]:
            batches.append(self._build(closed.take(window == start), int(start)))
        last_start = int(starts[-1]) if starts.size else boundary - self.window_ns
        final = closed.take(late | (window == last_start))
        if late.any():
            n_late = int(late.sum())
            self.late_points += n_late
            flags = np.where(late[late | (window == last_start)], q.Flag.LATE, 0)
            final.quality = final.quality | flags.astype(np.uint16)
        batches.append(self._build(final, last_start))
        return batches

    def _advance(self, boundary: int) -> None:
        if self._closed_until is None or boundary > self._closed_until:
            self._closed_until = boundary

    def _build(self, rows: _Rows, window_start: int) -> Batch:
        order = np.lexsort((rows.time, rows.gtag))
        rows = rows.take(order)
        present, inverse = np.unique(rows.gtag, return_inverse=True)
        window_end = window_start + self.window_ns
        digest = hashlib.blake2b(digest_size=6)
        for part in (self.gateway_id, self.config_hash, str(window_start)):
            digest.update(part.encode())
        for column in (rows.gtag, rows.time, rows.value, rows.quality):
            digest.update(np.ascontiguousarray(column).data)
        if rows.text is not None:
            digest.update(json.dumps(rows.text.tolist()).encode())
        batch_id = batch_id_for(window_start, digest.hexdigest())
        text = (
            pa.array(rows.text, type=pa.string())
            if rows.text is not None
            else pa.nulls(len(rows.gtag), pa.string())
        )
        metadata = {
            "gateway_id": self.gateway_id,
            "batch_id": batch_id,
            "window_start": _iso(window_start),
            "window_end": _iso(window_end),
            "window_start_ns": str(window_start),
            "window_end_ns": str(window_end),
            "config_hash": self.config_hash,
            "points": str(len(rows.gtag)),
            "tags": "{" + ",".join([self.tags.lineage_json[g] for g in present.tolist()]) + "}",
        }
        table = pa.Table.from_arrays(
            [
                pa.array(rows.time, type=pa.timestamp("ns", tz="UTC")),
                pa.DictionaryArray.from_arrays(
                    pa.array(self.tags.tag_source[rows.gtag]),
                    pa.array(self.tags.source_names, pa.string()),
                ),
                pa.DictionaryArray.from_arrays(
                    pa.array(inverse.astype(np.int32)),
                    pa.array(self.tags.tag_names[present], pa.string()),
                ),
                pa.array(rows.value, type=pa.float64()),
                pa.array(rows.quality, type=pa.uint16()),
                text,
            ],
            schema=SCHEMA.with_metadata(
                {f"{META_PREFIX}{key}": value for key, value in metadata.items()}
            ),
        )
        return Batch(batch_id, self.gateway_id, window_start, window_end, table)
