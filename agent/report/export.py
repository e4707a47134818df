"""``edge-agent export``: a stored dataset as one wide, time-aligned table for a model.

Two passes over the files. The first reads the footers only, not even their quality
figures: which tags there are, their lineage (unit, rate, filters, resampling method) and
the time range, which fix the table's columns and rows before the first is written. The
second reads the samples in window order (and adds up the footers' figures for the data
card on the way) and feeds them, a chunk of minutes at a time, to the agent's own resampler
(agent/windows/resample.py): every tag on the grid ``from + k * period``, interpolated or
held as its lineage says, a cell left empty where the samples around it are further apart
than the tag's own spacing (1.5 rates; an on-change tag's value is held up to
``HOLD_NS``, a compressed tag's up to its ``max_interval``). With ``--max-gap`` a second
resampler bridges gaps up to that long, and ``<tag>:filled`` marks the cells only it filled.
Bad samples are never used: they are gaps.

Values go to SI units where the unit table knows the unit (``rpm`` -> ``rad/s``,
``degC`` -> ``K``), the conversion recorded per tag. ``--normalize`` needs the statistics
of the whole column before the first value is written, so the table is first written
plain to a temporary Parquet file beside the output, then read back and scaled; the parameters go
to ``normalization.json`` and the data card. Files appear under their final names only when
complete. Nothing in the output depends on the clock or the machine: the same input gives
byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from agent.acquisition import quality as q
from agent.config.durations import format_duration, parse_duration
from agent.report.chunk import Chunk, ChunkBuilder
from agent.report.datacard import datacard, datacard_markdown
from agent.report.dataset import DatasetReader, Selection
from agent.report.figures import SAMPLE_COLUMNS, Report, tag_rows
from agent.report.footers import FooterFigures
from agent.report.series import SeriesIndex
from agent.report.tablefile import TIME, ColumnStats, TableWriter, rescale
from agent.stages.units import UNITS
from agent.windows.batch import Batch, TagEntry, TagTable
from agent.windows.resample import Resampler, method_of

HOLD_NS = 300_000_000_000  # longest an on-change or compressed tag's value is carried
_REACH_LIMIT_NS = 1_000_000_000_000  # the resampler's keys span at most ~18 min per chunk
_CHUNK_CELLS = 2_000_000  # grid cells (tags x instants) resampled at a time
_CHUNK_MAX_NS = 480_000_000_000
_SLACK = 1.5  # samples of a tag that keeps every one are this many rates apart at most
SI_UNITS = {
    "length": "m",
    "temperature": "K",
    "pressure": "Pa",
    "flow": "m3/s",
    "speed": "m/s",
    "rotational_speed": "rad/s",
}


class NothingToExport(Exception):
    """The selection holds no tag or no batch."""


class GridTooWide(Exception):
    """A period or a gap to bridge longer than the resampler's chunks can hold."""


@dataclass(frozen=True)
class ExportOptions:
    selection: Selection = field(default_factory=Selection)
    period_ns: int | None = None  # default: the fastest tag's rate
    max_gap_ns: int = 0
    format: str = "parquet"
    normalize: str | None = None  # minmax | zscore
    si_units: bool = True


@dataclass(frozen=True)
class Column:
    """One exported tag: where its samples come from and what is done to them."""

    number: int  # the series
    name: str
    gateway: str
    source: str
    tag: str
    lineage: dict[str, Any]
    method: str
    natural_gap_ns: int
    unit: str | None  # as exported
    factor: float = 1.0  # exported = stored * factor + offset
    offset: float = 0.0

    @property
    def converted(self) -> bool:
        return self.factor != 1.0 or self.offset != 0.0


def export(dataset: Path, out: Path, options: ExportOptions) -> list[Path]:
    """Write the table, the data card (JSON and Markdown) and any normalisation parameters
    into ``out``; returns the files written."""
    series = SeriesIndex(options.selection)
    first, last = _lineage_pass(dataset, options.selection, series)
    names = series.names()
    columns = [
        _column(number, names[number], series, options.si_units)
        for number in sorted(range(series.count), key=lambda n: names[n])
        if series.lineage(number)
    ]
    if not columns or first is None or last is None:
        raise NothingToExport(f"{dataset}: no tag and no batch in the selection: nothing to export")
    period = options.period_ns or min(_rate_ns(c.lineage) for c in columns)
    start = options.selection.from_ns or first
    end = options.selection.to_ns or last
    start, end = start // period * period, -(-end // period) * period
    grid = _Grid(series, columns, period, start, end, options)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "parquet" if options.format == "parquet" else "csv"
    data = out / f"data.{suffix}"
    plain = out / ".data.plain.parquet" if options.normalize else data
    stats, report = grid.write(
        dataset, _temporary(plain), "parquet" if options.normalize else options.format
    )
    _temporary(plain).replace(plain)
    normalization = None
    if options.normalize:
        offset, scale = stats.normalization(options.normalize)
        rescale(plain, _temporary(data), [c.name for c in columns], offset, scale, options.format)
        _temporary(data).replace(data)
        plain.unlink()
        normalization = {
            "method": options.normalize,
            "formula": "normalized = (value - offset) / scale",
            "columns": {
                c.name: {"offset": float(o), "scale": float(s)}
                for c, o, s in zip(columns, offset.tolist(), scale.tolist(), strict=True)
            },
        }
    rows = {row.number: row for row in tag_rows(report)}
    card = datacard(
        report, columns, rows, stats, normalization, grid.describe(data.name), options, grid.cells
    )
    written = [data]
    if normalization is not None:
        written.append(_write_text(out / "normalization.json", _json(normalization)))
    written.append(_write_text(out / "datacard.json", _json(card)))
    written.append(_write_text(out / "DATACARD.md", datacard_markdown(card)))
    return written


def _lineage_pass(
    dataset: Path, selection: Selection, series: SeriesIndex
) -> tuple[int | None, int | None]:
    """The first pass, footers only and without their quality figures: every tag and its
    lineage (the table's columns), and the windows' range."""
    first: int | None = None
    last: int | None = None
    for stored in DatasetReader(dataset, selection, quality=False):
        footer = stored.footer
        series.view(footer)
        first = footer.window_start if first is None else min(first, footer.window_start)
        last = footer.window_end if last is None else max(last, footer.window_end)
    return first, last


def _json(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=False, allow_nan=False) + "\n"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _write_text(path: Path, text: str) -> Path:
    temporary = _temporary(path)
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    return path


def _rate_ns(lineage: dict[str, Any]) -> int:
    """The period a tag is sampled at: its rate, or a derived feature's window."""
    for key in ("rate", "window"):
        if key in lineage:
            return parse_duration(lineage[key])
    return 1_000_000_000


def natural_gap_ns(lineage: dict[str, Any]) -> int:
    """How far apart a tag's stored samples may rightly be: 1.5 rates for one that keeps
    every sample, its heartbeat for a compressed one, ``HOLD_NS`` for one sent on change."""
    rate = _rate_ns(lineage)
    if lineage.get("on_change"):
        return HOLD_NS
    intervals = [
        parse_duration(lineage[key]["max_interval"])
        for key in ("deadband", "swinging_door")
        if isinstance(lineage.get(key), dict) and "max_interval" in lineage[key]
    ]
    if intervals:
        return min(max(intervals) + rate, HOLD_NS)
    return min(round(_SLACK * rate), HOLD_NS)


def si_conversion(unit: str | None) -> tuple[str | None, float, float]:
    """(SI unit, factor, offset) for a unit the unit table knows; the unit unchanged else."""
    known = UNITS.get(unit or "")
    if known is None:
        return unit, 1.0, 0.0
    target = SI_UNITS[known.family]
    return target, known.factor / UNITS[target].factor, known.offset


def _column(number: int, name: str, series: SeriesIndex, si_units: bool) -> Column:
    gateway, source, tag = series.keys[number]
    lineage = series.lineage(number)
    unit = lineage.get("unit")
    factor, offset = 1.0, 0.0
    if si_units:
        unit, factor, offset = si_conversion(unit)
    return Column(
        number,
        name,
        gateway,
        source,
        tag,
        lineage,
        method_of(lineage),
        natural_gap_ns(lineage),
        unit,
        factor,
        offset,
    )


class _Grid:
    """The second pass: samples -> resampler(s) -> the table, chunk by chunk."""

    def __init__(
        self,
        series: SeriesIndex,
        columns: list[Column],
        period: int,
        start: int,
        end: int,
        options: ExportOptions,
    ) -> None:
        self.series = series
        self.columns = columns
        self.period = period
        self.start = start
        self.end = end
        self.options = options
        self.cells = 0
        self.late = 0  # rows for a chunk already written: not in the grid
        keys = sorted({(c.gateway, c.source) for c in columns})
        several = len(series.gateways()) > 1
        source_names = [f"{g}:{s}" if several else s for g, s in keys]
        source_of = {key: index for index, key in enumerate(keys)}
        slots: list[list[TagEntry]] = [[] for _ in keys]
        for c in columns:
            index = source_of[(c.gateway, c.source)]
            slots[index].append(TagEntry(source_names[index], c.tag, c.lineage))
        self.tags = TagTable.of_slots(source_names, slots)
        # the tag table orders by source: each column's place in it, and each series'
        place = {name: g for g, name in enumerate(self.tags.qualified)}
        self.order = np.array(
            [place[f"{source_names[source_of[(c.gateway, c.source)]]}/{c.tag}"] for c in columns],
            np.int64,
        )
        self.series_gtag = np.full(series.count, -1, np.int64)
        self.series_gtag[[c.number for c in columns]] = self.order
        natural = np.empty(len(columns), np.int64)
        natural[self.order] = [c.natural_gap_ns for c in columns]
        methods = [""] * len(columns)
        for column, g in zip(columns, self.order.tolist(), strict=True):
            methods[g] = column.method
        bridged = np.maximum(natural, options.max_gap_ns)
        reach = int(bridged.max())
        room = _REACH_LIMIT_NS - 2 * reach
        if room < period:
            raise GridTooWide(
                f"--period {format_duration(period)} with gaps bridged up to "
                f"{format_duration(reach)}: the period plus twice the longest bridge must stay "
                f"under {format_duration(_REACH_LIMIT_NS)}; shorten --period or --max-gap"
            )
        chunk = min(_CHUNK_MAX_NS, room, max(period, _CHUNK_CELLS // len(columns) * period))
        self.chunk_ns = max(period, chunk // period * period)
        self.natural = Resampler(self.tags, methods, period, natural)
        self.bridging = (
            Resampler(self.tags, methods, period, bridged) if options.max_gap_ns else None
        )
        self.factor = np.array([c.factor for c in columns])
        self.offset = np.array([c.offset for c in columns])

    def describe(self, data: str) -> dict[str, Any]:
        return {
            "file": data,
            "format": self.options.format,
            "period": format_duration(self.period),
            "period_ns": self.period,
            "from_ns": self.start,
            "to_ns": self.end,
            "rows": (self.end - self.start) // self.period,
            "max_gap": format_duration(self.options.max_gap_ns),
            "late_samples_left_out": self.late,
        }

    def schema(self) -> pa.Schema:
        fields = [pa.field("time", TIME, nullable=False)]
        for column in self.columns:
            fields.append(pa.field(column.name, pa.float64()))
            if self.bridging is not None:
                fields.append(pa.field(f"{column.name}:filled", pa.bool_(), nullable=False))
        metadata = {"edge_agent.export": json.dumps({"period": format_duration(self.period)})}
        return pa.schema(fields, metadata=metadata)

    def write(self, dataset: Path, path: Path, format: str) -> tuple[ColumnStats, Report]:
        """The second pass: the table written to ``path`` as ``format``; its statistics, and
        the report of the batches' footers (their figures for the data card) read on the
        way."""
        stats = ColumnStats.empty(len(self.columns))
        self.series.rewind()  # the lineage history again, with the figures
        footers = FooterFigures(self.series)
        reader = DatasetReader(dataset, self.options.selection, SAMPLE_COLUMNS)
        writer = TableWriter(path, self.schema(), format)
        try:
            for values, filled in self._cells(reader, footers):
                stats.add(values, filled)
                writer.write(self._table(values, filled, self._times(values.shape[0])))
        finally:
            writer.close()
        footers.flush()
        report = Report(
            dataset, self.options.selection, self.series, footers, None, None, reader.skipped
        )
        return stats, report

    def _times(self, count: int) -> np.ndarray:
        first = self.start + self.cells * self.period
        self.cells += count
        return first + np.arange(count, dtype=np.int64) * self.period

    def _table(self, values: np.ndarray, filled: np.ndarray, times: np.ndarray) -> pa.Table:
        arrays = [pa.Array.from_buffers(TIME, times.shape[0], [None, pa.py_buffer(times)])]
        for index in range(len(self.columns)):
            column = values[:, index]
            arrays.append(pa.array(column, pa.float64(), from_pandas=True))
            if self.bridging is not None:
                arrays.append(pa.array(filled[:, index], pa.bool_()))
        return pa.Table.from_arrays(arrays, schema=self.schema())

    def _cells(self, reader: DatasetReader, footers: FooterFigures) -> Any:
        """(values, filled) per chunk of the grid, in time order: (instants, columns)."""
        builder = ChunkBuilder(self.series, self.options.selection, rows=2**62)
        held: list[Chunk] = []
        low = self.start
        for stored in reader:
            footers.add(stored.footer)
            while stored.footer.window_start >= low + self.chunk_ns and low < self.end:
                part = builder.take()
                held = [*held, part] if part is not None else held
                yield from self._resampled(low, held)
                held = [_after(c, low + self.chunk_ns) for c in held]
                low += self.chunk_ns
            if stored.table is not None:
                builder.add(stored.footer.gateway, stored.table)
        part = builder.take()
        held = [*held, part] if part is not None else held
        while low < self.end:
            yield from self._resampled(low, held)
            held = [_after(c, low + self.chunk_ns) for c in held]
            low += self.chunk_ns
        yield from self._flushed()

    def _resampled(self, low: int, held: list[Chunk]) -> Any:
        high = min(low + self.chunk_ns, self.end)
        batch = self._batch(low, high, held)
        wide = self.natural.feed(batch)
        bridged = self.bridging.feed(batch) if self.bridging is not None else []
        if wide:
            yield self._cells_of(wide[0], bridged[0] if bridged else None)

    def _flushed(self) -> Any:
        wide = self.natural.flush()
        bridged = self.bridging.flush() if self.bridging is not None else []
        if wide:
            yield self._cells_of(wide[0], bridged[0] if bridged else None)

    def _batch(self, low: int, high: int, held: list[Chunk]) -> Batch:
        """The rows in [low, high) as a batch the resampler takes; rows before ``low`` came
        late for a chunk already resampled and are counted out."""
        parts = [c for c in held if len(c)]
        if parts:
            series = np.concatenate([c.series for c in parts])
            time = np.concatenate([c.time for c in parts])
            value = np.concatenate([c.value for c in parts])
            quality = np.concatenate([c.quality for c in parts])
        else:
            series, time = np.empty(0, np.int64), np.empty(0, np.int64)
            value, quality = np.empty(0), np.empty(0, np.uint16)
        self.late += int(np.count_nonzero(time < low))
        inside = (time >= low) & (time < high)
        gtag = self.series_gtag[series[inside]]
        # a sample stored late but inside this chunk is resampled like the others
        quality = quality[inside] & np.uint16(~q.Flag.LATE & 0xFFFF)
        tags = self.tags
        table = pa.table(
            {
                "time": pa.array(time[inside], TIME),
                "source": pa.DictionaryArray.from_arrays(
                    pa.array(tags.tag_source[gtag], pa.int32()), tags.source_names
                ),
                "tag": pa.DictionaryArray.from_arrays(
                    pa.array(gtag, pa.int32()), pa.array(list(tags.tag_names), pa.string())
                ),
                "value": pa.array(value[inside], pa.float64()),
                "quality": pa.array(quality, pa.uint16()),
            }
        )
        return Batch("export", "", low, high, table)

    def _cells_of(self, wide: Batch, bridged: Batch | None) -> tuple[np.ndarray, np.ndarray]:
        natural = _values(wide, self.tags.qualified, self.order)
        if bridged is None:
            values, filled = natural, np.zeros(natural.shape, bool)
        else:
            values = _values(bridged, self.tags.qualified, self.order)
            filled = np.isnan(natural) & ~np.isnan(values)
        return values * self.factor + self.offset, filled


def _values(wide: Batch, qualified: list[str], order: np.ndarray) -> np.ndarray:
    """(instants, columns) of a wide batch, in the export's column order, NaN where empty."""
    return np.column_stack(
        [wide.table[qualified[g]].to_numpy(zero_copy_only=False) for g in order.tolist()]
    ).astype(np.float64)


def _after(chunk: Chunk, boundary: int) -> Chunk:
    keep = chunk.time >= boundary
    return Chunk(chunk.series[keep], chunk.time[keep], chunk.value[keep], chunk.quality[keep])
