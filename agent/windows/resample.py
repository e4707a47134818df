"""Wide, gap-filled output: every tag on one time grid, one column per tag, for ML datasets.

Each closed window of the long form is resampled onto ``window_start + k * period``. A
tag's method decides a cell's value: ``linear`` interpolates between the usable samples
around the grid instant, ``previous`` holds the last one (discrete signals), and ``mean``,
``min``, ``max`` and ``last`` aggregate the samples of the cell's interval
``[t, t + period)`` when downsampling. Where the samples around an instant are more than
``max_gap`` apart, or there are none, the cell is null with quality BAD/NO_DATA: gaps are
marked, never invented. A cell that falls exactly on a sample keeps that sample's quality;
a filled one gets reason INTERPOLATED with the worse severity of its neighbours.

Interpolating the end of a window needs the first samples of the next one, so a window is
resampled when the following window closes (or on flush, with what there is). The work is
vectorised across tags: samples and grid instants of all tags are merged by one
``searchsorted`` on (tag, time) keys; no Python loop runs over tags or samples.

The wide table has a ``time`` column, then ``<source>/<tag>`` (float64) and
``<source>/<tag>:quality`` (uint16) for every tag, and the methods in its metadata.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from agent.acquisition import quality as q
from agent.windows.batch import META_PREFIX, Batch, TagTable, batch_id_for

METHODS = ("linear", "previous", "mean", "min", "max", "last")
_AGGREGATIONS = ("mean", "min", "max", "last")
_TIME_BITS = 40  # keys are (tag << 40) | ns since the left margin: windows up to ~18 min
_NO_DATA = q.make(q.BAD, q.Reason.NO_DATA)
_TIMESTAMP = pa.timestamp("ns", tz="UTC")


@dataclass(slots=True)
class _Samples:
    """Usable (not bad, not NaN) samples of all tags, sorted by (global tag, time)."""

    tag: np.ndarray  # int64 global tag index
    time: np.ndarray
    value: np.ndarray
    quality: np.ndarray

    def take(self, index: np.ndarray) -> _Samples:
        return _Samples(self.tag[index], self.time[index], self.value[index], self.quality[index])


def _concat(parts: list[_Samples]) -> _Samples:
    return _Samples(
        np.concatenate([p.tag for p in parts]),
        np.concatenate([p.time for p in parts]),
        np.concatenate([p.value for p in parts]),
        np.concatenate([p.quality for p in parts]),
    )


def method_of(lineage: dict[str, Any]) -> str:
    """The tag's resampling method: as its lineage says, else ``previous`` for a tag sent
    on change (its value held until it changes) and for a feature (a window's figure,
    stamped at the window's start, holds over it), else ``linear``."""
    held = lineage.get("on_change") or "feature" in lineage
    return str(lineage.get("resample") or ("previous" if held else "linear"))


def methods_of(tags: TagTable) -> list[str]:
    """One method per live tag of ``tags``, derived (feature) tags included."""
    return [method_of(lineage) for lineage in tags.lineage[: tags.live_tags]]


class Resampler:
    """Turns closed long-form batches into wide batches, one window behind."""

    def __init__(
        self, tags: TagTable, methods: list[str], period_ns: int, max_gap_ns: int | np.ndarray
    ) -> None:
        """``max_gap_ns``: one for all tags, or one per tag (the export bridges each tag's own
        sample spacing, and gaps up to a limit of its own: then ``retable`` takes the new
        tags' own)."""
        self.period_ns = period_ns
        self._set_max_gap(max_gap_ns)
        self._held: tuple[Batch, _Samples] | None = None
        self._last = _Samples(
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.uint16)
        )
        self.retable(tags, methods, np.zeros(0, np.int64))

    def _set_max_gap(self, max_gap_ns: int | np.ndarray) -> None:
        self.max_gap_ns = np.asarray(max_gap_ns, np.int64)
        self.reach_ns = int(self.max_gap_ns.max(initial=0))  # the farthest neighbour used

    def retable(
        self,
        tags: TagTable,
        methods: list[str],
        moved: np.ndarray,
        max_gap_ns: int | np.ndarray | None = None,
    ) -> None:
        """Columns for the live tags of ``tags`` (``methods``: one per live tag, and
        ``max_gap_ns`` if one per tag); the held window and each tag's last sample follow
        their tag by name (``moved``: old index -> new or -1, see ``TagTable.moved_from``).
        Retired tags get no column: their rows are in the long form."""
        if max_gap_ns is not None:
            self._set_max_gap(max_gap_ns)
        self.tags = tags
        self.size = tags.live_tags
        self._by_method = {
            method: np.array([i for i, m in enumerate(methods) if m == method], np.int64)
            for method in METHODS
        }
        self._methods = methods
        self._version = -1  # of the tag table the names below were read from: read anew
        self._methods_json = ""
        self._gtag_of: dict[tuple[str, str], int] = {}
        self._named = np.zeros(0, np.int64)
        size = self.size
        # the last usable sample of every tag before the held window: its left neighbour
        last = _Samples(
            np.arange(size, dtype=np.int64),
            np.full(size, np.iinfo(np.int64).min, np.int64),
            np.full(size, np.nan),
            np.zeros(size, np.uint16),
        )
        if self._last.tag.shape[0]:
            to = moved[self._last.tag]
            kept = (to >= 0) & (to < size)
            last.time[to[kept]] = self._last.time[kept]
            last.value[to[kept]] = self._last.value[kept]
            last.quality[to[kept]] = self._last.quality[kept]
        self._last = last
        if self._held is not None:
            batch, samples = self._held
            to = moved[samples.tag]
            kept = samples.take((to >= 0) & (to < size))
            kept.tag = to[(to >= 0) & (to < size)]
            self._held = (batch, kept.take(np.lexsort((kept.time, kept.tag))))

    def _read_names(self) -> None:
        """Names, and which tags have a column, from the tag table (drivers may name
        placeholder tags at run time: ``TagTable.describe``)."""
        tags = self.tags
        if self._version == tags.version:
            return
        self._version = tags.version
        self._named = np.flatnonzero(~tags.placeholder[: self.size])
        named = self._named.tolist()
        self._methods_json = json.dumps({tags.qualified[g]: self._methods[g] for g in named})
        self._gtag_of = {
            (tags.source_names[int(tags.tag_source[g])], str(tags.tag_names[g])): g for g in named
        }

    def feed(self, batch: Batch) -> list[Batch]:
        """Take a closed batch; return the wide batch of the window before it, if any."""
        self._read_names()
        samples = self._samples(batch)
        held, self._held = self._held, (batch, samples)
        if held is None:
            return []
        return [self._resample(*held, following=samples)]

    def flush(self) -> list[Batch]:
        self._read_names()
        held, self._held = self._held, None
        return [] if held is None else [self._resample(*held, following=None)]

    def _samples(self, batch: Batch) -> _Samples:
        table = batch.table
        quality = table["quality"].to_numpy()
        value = table["value"].to_numpy(zero_copy_only=False)
        late = (quality & q.Flag.LATE) != 0  # late rows belong to a window already resampled
        usable = ((quality & q.SEVERITY_MASK) != q.BAD) & ~np.isnan(value) & ~late
        source = table["source"].combine_chunks()
        tag = table["tag"].combine_chunks()
        # map (source, tag) dictionary codes to global tags: a few entries, not one per row
        width = len(tag.dictionary)
        codes = source.indices.to_numpy().astype(np.int64) * width + tag.indices.to_numpy()
        unique, inverse = np.unique(codes[usable], return_inverse=True)
        sources, names = source.dictionary.to_pylist(), tag.dictionary.to_pylist()
        gtags = np.array(
            [
                self._gtag_of.get((sources[c // width], names[c % width]), -1)
                for c in unique.tolist()
            ],
            np.int64,
        )
        rows = _Samples(
            gtags[inverse],
            table["time"].cast(pa.int64()).to_numpy()[usable],
            value[usable],
            quality[usable],
        )
        rows = rows.take(rows.tag >= 0)  # a tag a reload took out has no column any more
        return rows.take(np.lexsort((rows.time, rows.tag)))

    def _resample(self, batch: Batch, samples: _Samples, following: _Samples | None) -> Batch:
        start, end = batch.window_start_ns, batch.window_end_ns
        grid = np.arange(start, end, self.period_ns, dtype=np.int64)
        values = np.full((self.size, grid.shape[0]), np.nan)
        qualities = np.full((self.size, grid.shape[0]), _NO_DATA, np.uint16)
        margin = start - self.reach_ns
        neighbours = [self._last.take(self._last.time >= margin), samples]
        if following is not None:
            neighbours.append(_first_of_each_tag(following, end + self.reach_ns))
        merged = _concat(neighbours)
        merged = merged.take(np.lexsort((merged.time, merged.tag)))
        for method in ("linear", "previous"):
            tags = self._by_method[method]
            if tags.size:
                self._interpolate(merged, tags, grid, margin, method, values, qualities)
        for method in _AGGREGATIONS:
            tags = self._by_method[method]
            if tags.size:
                self._aggregate(samples, tags, start, grid.shape[0], method, values, qualities)
        self._remember_last(samples)
        return self._wide_batch(batch, grid, values, qualities)

    def _interpolate(
        self,
        merged: _Samples,
        tags: np.ndarray,
        grid: np.ndarray,
        margin: int,
        method: str,
        values: np.ndarray,
        qualities: np.ndarray,
    ) -> None:
        if not merged.tag.shape[0]:
            return  # nothing anywhere near: every cell stays a gap
        keys = (merged.tag << _TIME_BITS) | (merged.time - margin)
        cell_tag = np.repeat(tags, grid.shape[0])
        cell_time = np.tile(grid, tags.shape[0])
        cell_keys = (cell_tag << _TIME_BITS) | (cell_time - margin)
        left = np.searchsorted(keys, cell_keys, side="right") - 1
        has_left = (left >= 0) & (merged.tag[np.maximum(left, 0)] == cell_tag)
        left = np.maximum(left, 0)
        exact = has_left & (merged.time[left] == cell_time)
        max_gap = self.max_gap_ns[cell_tag] if self.max_gap_ns.ndim else self.max_gap_ns
        if method == "linear":
            right = np.minimum(left + 1, merged.tag.shape[0] - 1)
            has_right = has_left & (left + 1 < merged.tag.shape[0])
            has_right &= merged.tag[right] == cell_tag
            span = merged.time[right] - merged.time[left]
            filled = has_right & (span <= max_gap) & ~exact
            weight = (cell_time - merged.time[left]) / np.where(span > 0, span, 1)
            value = merged.value[left] + weight * (merged.value[right] - merged.value[left])
            worse = np.maximum(merged.quality[left], merged.quality[right]) & q.SEVERITY_MASK
        else:  # previous: hold the last sample for up to max_gap
            filled = has_left & ~exact & (cell_time - merged.time[left] <= max_gap)
            value = merged.value[left]
            worse = merged.quality[left] & q.SEVERITY_MASK
        cell_value = np.where(exact, merged.value[left], np.where(filled, value, np.nan))
        cell_quality = np.where(
            exact,
            merged.quality[left],
            np.where(filled, worse | int(q.Reason.INTERPOLATED), _NO_DATA),
        )
        values[tags] = cell_value.reshape(tags.shape[0], grid.shape[0])
        qualities[tags] = cell_quality.reshape(tags.shape[0], grid.shape[0])

    def _aggregate(
        self,
        samples: _Samples,
        tags: np.ndarray,
        start: int,
        cells: int,
        method: str,
        values: np.ndarray,
        qualities: np.ndarray,
    ) -> None:
        mine = np.isin(samples.tag, tags)
        rows = samples.take(mine)
        if not rows.tag.shape[0]:
            return
        cell = np.minimum((rows.time - start) // self.period_ns, cells - 1)
        ids = rows.tag * cells + cell  # ascending: rows are sorted by (tag, time)
        first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        last = np.r_[first[1:], ids.shape[0]] - 1
        if method == "mean":
            reduced = np.add.reduceat(rows.value, first) / (last - first + 1)
        elif method == "min":
            reduced = np.minimum.reduceat(rows.value, first)
        elif method == "max":
            reduced = np.maximum.reduceat(rows.value, first)
        else:  # last
            reduced = rows.value[last]
        severity = np.maximum.reduceat(rows.quality & q.SEVERITY_MASK, first)
        target_tag, target_cell = rows.tag[first], cell[first]
        values[target_tag, target_cell] = reduced
        qualities[target_tag, target_cell] = severity

    def _remember_last(self, samples: _Samples) -> None:
        if not samples.tag.shape[0]:
            return
        ends = np.flatnonzero(np.r_[samples.tag[1:] != samples.tag[:-1], True])
        tags = samples.tag[ends]
        self._last.time[tags] = samples.time[ends]
        self._last.value[tags] = samples.value[ends]
        self._last.quality[tags] = samples.quality[ends]

    def _wide_batch(
        self, batch: Batch, grid: np.ndarray, values: np.ndarray, qualities: np.ndarray
    ) -> Batch:
        columns: dict[str, pa.Array] = {"time": pa.array(grid, _TIMESTAMP)}
        for g in self._named.tolist():
            name = self.tags.qualified[g]
            columns[name] = pa.array(values[g], pa.float64(), mask=np.isnan(values[g]))
            columns[f"{name}:quality"] = pa.array(qualities[g], pa.uint16())
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(batch.batch_id.encode())
        digest.update(values.tobytes())
        digest.update(qualities.tobytes())
        batch_id = batch_id_for(batch.window_start_ns, digest.hexdigest()[:12])
        metadata = {
            "gateway_id": batch.gateway_id,
            "batch_id": batch_id,
            "source_batch_id": batch.batch_id,
            "window_start_ns": str(batch.window_start_ns),
            "window_end_ns": str(batch.window_end_ns),
            "period_ns": str(self.period_ns),
            "max_gap_ns": str(self.reach_ns),
            "methods": self._methods_json,
        }
        table = pa.table(columns).replace_schema_metadata(
            {f"{META_PREFIX}{key}": value for key, value in metadata.items()}
        )
        return Batch(batch_id, batch.gateway_id, batch.window_start_ns, batch.window_end_ns, table)


def _first_of_each_tag(samples: _Samples, until_ns: int) -> _Samples:
    """Each tag's first sample (the right neighbour of the window before), if soon enough."""
    if not samples.tag.shape[0]:
        return samples
    firsts = np.flatnonzero(np.r_[True, samples.tag[1:] != samples.tag[:-1]])
    head = samples.take(firsts)
    return head.take(head.time <= until_ns)
