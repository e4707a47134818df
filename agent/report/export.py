"""``edge-agent export``: a stored dataset as one wide, time-aligned table for a model.

One pass over the files, in window order: each file's footer (its lineage, which says
which tags there are, their unit, rate, filters and resampling method, and its quality
figures for the data card) and samples, fed a chunk of minutes at a time to the agent's
own resampler (agent/windows/resample.py): every tag on the grid ``from + k * period``,
interpolated or held as its lineage says, a cell left empty where the samples around it
are further apart than the tag's own spacing (1.5 rates; an on-change tag's value is held
up to ``HOLD_NS``, a compressed tag's up to its ``max_interval``). With ``--max-gap`` a
second resampler bridges gaps up to that long, and ``<tag>:filled`` marks the cells only it
filled. Bad samples are never used: they are gaps.

The columns are those the lineage read so far names (a table's columns must be fixed
before its first row is written): the table is written in parts, a new one whenever a tag
shows up later (an on-change tag's first change, a tag a reload added), and the parts are
unified at the end, the columns a part lacks left empty, which is what they are there.
Only a change that would alter the cells already written (a faster tag changing the
default period, a tag's unit, method or spacing changing, a window earlier than the
first) makes a second pass, with the layout the whole dataset gives. Values go to SI units
where the unit table knows the unit (``rpm`` -> ``rad/s``, ``degC`` -> ``K``), the
conversion recorded per tag. ``--normalize`` needs the statistics of the whole column, so
it is applied in the final rewrite, which also turns the parts into CSV; with one part,
Parquet and no normalisation, the part is the table. The parameters go to
``normalization.json`` and the data card. Files appear under their final names only when
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
from agent.report.dataset import DatasetReader, Selection, Stored
from agent.report.figures import SAMPLE_COLUMNS, Report, tag_rows
from agent.report.footers import FooterFigures
from agent.report.series import SeriesIndex
from agent.report.tablefile import TIME, ColumnStats, TableWriter, rewrite
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
    footers = FooterFigures(series)
    reader = DatasetReader(dataset, options.selection, SAMPLE_COLUMNS)
    made = not out.exists()
    grid: _Grid | None = None
    try:
        grid = _single_pass(reader, footers, series, options, out)
        footers.flush()
        final = _layout(series, options, footers.first_ns)
        if final is None or footers.last_ns is None:
            raise NothingToExport(
                f"{dataset}: no tag and no batch in the selection: nothing to export"
            )
        if grid is None or not grid.holds(final):
            if grid is not None:
                grid.discard()
            grid = _Grid(final, series, options, out)
            for stored in DatasetReader(dataset, options.selection, SAMPLE_COLUMNS, quality=False):
                grid.add(stored)
        end = final.end or -(-footers.last_ns // final.period) * final.period
        grid.finish(end)
        return _outputs(dataset, out, options, final, grid, footers, reader.skipped)
    except BaseException:
        if grid is not None:
            grid.discard()
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _single_pass(
    reader: DatasetReader,
    footers: FooterFigures,
    series: SeriesIndex,
    options: ExportOptions,
    out: Path,
) -> _Grid | None:
    """Every footer added up, and the grid made from the samples with the layout the
    lineage read so far gives; None if a change of layout invalidated what was written
    (the caller makes a second pass then)."""
    grid: _Grid | None = None
    revision = -1
    valid = True
    for stored in reader:
        footers.add(stored.footer)
        if not valid:
            continue
        if series.revision != revision:
            revision = series.revision
            try:
                layout = _layout(series, options, footers.first_ns)
            except GridTooWide:  # maybe not with the whole dataset's layout: it will tell
                layout, valid = None, False
            if layout is not None and grid is None:
                grid = _Grid(layout, series, options, out)
            elif layout is not None and grid is not None:
                valid = layout.extends(grid.layout)
                if valid:
                    grid.relayout(layout)
        if grid is None and stored.table is not None and stored.table.num_rows:
            valid = False  # samples before any lineage: no column to put them in yet
        if valid and grid is not None:
            grid.add(stored)
    if not valid and grid is not None:
        grid.discard()
        return None
    return grid


def _outputs(
    dataset: Path,
    out: Path,
    options: ExportOptions,
    layout: _Layout,
    grid: _Grid,
    footers: FooterFigures,
    skipped: list[tuple[str, str]],
) -> list[Path]:
    """The table from the grid's parts (unified, normalised, as CSV: whatever applies),
    then the data card."""
    columns = list(layout.columns)
    stats = grid.stats.take(np.array([c.number for c in columns], np.int64))
    data = out / f"data.{'parquet' if options.format == 'parquet' else 'csv'}"
    schema = _schema(layout, bool(options.max_gap_ns))
    normalization = None
    scaling = None
    if options.normalize:
        offset, scale = stats.normalization(options.normalize)
        scaling = ([c.name for c in columns], offset, scale)
        normalization = {
            "method": options.normalize,
            "formula": "normalized = (value - offset) / scale",
            "columns": {
                c.name: {"offset": float(o), "scale": float(s)}
                for c, o, s in zip(columns, offset.tolist(), scale.tolist(), strict=True)
            },
        }
    out.mkdir(parents=True, exist_ok=True)
    if grid.schemas == [schema] and options.format == "parquet" and scaling is None:
        grid.parts[0].replace(data)  # the one part is the table
    else:
        rewrite(grid.parts, _temporary(data), schema, options.format, scaling)
        _temporary(data).replace(data)
        grid.discard()
    report = Report(dataset, options.selection, grid.series, footers, None, None, skipped)
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


@dataclass(frozen=True)
class _Layout:
    """The table's columns and time grid, as the lineage read so far gives them."""

    columns: tuple[Column, ...]
    period: int
    start: int
    end: int | None  # None: the last window's end, known once every file is read
    chunk_ns: int
    several: bool  # several gateways: sources are named gateway:source

    def grid(self) -> tuple[int, int, int, bool]:
        return self.period, self.start, self.chunk_ns, self.several

    def cells(self) -> dict[int, tuple[str, str, int, float, float]]:
        """Per series, what its cells depend on (not, say, its description)."""
        return {
            c.number: (c.name, c.method, c.natural_gap_ns, c.factor, c.offset) for c in self.columns
        }

    def extends(self, old: _Layout) -> bool:
        """Whether this layout only adds columns to ``old``: the cells made with ``old``
        stay right (a new column is empty before its tag was first described)."""
        mine = self.cells()
        return self.grid() == old.grid() and all(
            mine.get(number) == cells for number, cells in old.cells().items()
        )


def _layout(series: SeriesIndex, options: ExportOptions, first_ns: int | None) -> _Layout | None:
    """The layout of the lineage read so far (None: no tag or no window yet): columns
    by name, the period (the fastest tag's rate unless given), and chunks as long as the
    resampler's keys allow."""
    names = series.names()
    columns = tuple(
        _column(number, names[number], series, options.si_units)
        for number in sorted(range(series.count), key=lambda n: names[n])
        if series.lineage(number)
    )
    if not columns or first_ns is None:
        return None
    period = options.period_ns or min(_rate_ns(c.lineage) for c in columns)
    start = (options.selection.from_ns or first_ns) // period * period
    end = options.selection.to_ns
    reach = max(max(c.natural_gap_ns for c in columns), options.max_gap_ns)
    room = _REACH_LIMIT_NS - 2 * reach
    if room < period:
        raise GridTooWide(
            f"--period {format_duration(period)} with gaps bridged up to "
            f"{format_duration(reach)}: the period plus twice the longest bridge must stay "
            f"under {format_duration(_REACH_LIMIT_NS)}; shorten --period or --max-gap"
        )
    chunk = min(_CHUNK_MAX_NS, room, max(period, _CHUNK_CELLS // len(columns) * period))
    return _Layout(
        columns,
        period,
        start,
        None if end is None else -(-end // period) * period,
        max(period, chunk // period * period),
        len(series.gateways()) > 1,
    )


def _schema(layout: _Layout, bridging: bool) -> pa.Schema:
    fields = [pa.field("time", TIME, nullable=False)]
    for column in layout.columns:
        fields.append(pa.field(column.name, pa.float64()))
        if bridging:
            fields.append(pa.field(f"{column.name}:filled", pa.bool_(), nullable=False))
    metadata = {"edge_agent.export": json.dumps({"period": format_duration(layout.period)})}
    return pa.schema(fields, metadata=metadata)


class _Grid:
    """Samples -> resampler(s) -> the table's parts, chunk by chunk, in time order; a
    part per column set (see ``relayout``)."""

    tags: TagTable  # of the current layout's columns

    def __init__(
        self, layout: _Layout, series: SeriesIndex, options: ExportOptions, folder: Path
    ) -> None:
        self.series = series
        self.options = options
        self.folder = folder
        self.layout = layout
        self.end = layout.end
        self.low = layout.start  # of the next chunk to resample
        self.cells = 0
        self.late = 0  # rows for a chunk already written: not in the grid
        self.unplaced: set[int] = set()  # series with rows but no column (yet)
        self.stats = ColumnStats.empty(0)  # by series number
        self.parts: list[Path] = []
        self.schemas: list[pa.Schema] = []
        self._writer: TableWriter | None = None
        self._builder = ChunkBuilder(series, options.selection, rows=2**62)
        self._held: list[Chunk] = []
        self.natural: Resampler | None = None
        self.bridging: Resampler | None = None
        self.relayout(layout)

    def relayout(self, layout: _Layout) -> None:
        """Take a layout that extends the current one: its new columns join the
        resamplers, which keep what they hold of the others."""
        self.layout = layout
        columns = layout.columns
        keys = sorted({(c.gateway, c.source) for c in columns})
        source_names = [f"{g}:{s}" if layout.several else s for g, s in keys]
        source_of = {key: index for index, key in enumerate(keys)}
        slots: list[list[TagEntry]] = [[] for _ in keys]
        for c in columns:
            index = source_of[(c.gateway, c.source)]
            slots[index].append(TagEntry(source_names[index], c.tag, c.lineage))
        tags = TagTable.of_slots(source_names, slots)
        # the tag table orders by source: each column's place in it
        place = {name: g for g, name in enumerate(tags.qualified)}
        self.order = np.array(
            [place[f"{source_names[source_of[(c.gateway, c.source)]]}/{c.tag}"] for c in columns],
            np.int64,
        )
        self.numbers = np.array([c.number for c in columns], np.int64)
        natural = np.empty(len(columns), np.int64)
        natural[self.order] = [c.natural_gap_ns for c in columns]
        methods = [""] * len(columns)
        for column, g in zip(columns, self.order.tolist(), strict=True):
            methods[g] = column.method
        bridged = np.maximum(natural, self.options.max_gap_ns)
        if self.natural is None:
            self.natural = Resampler(tags, methods, layout.period, natural)
            if self.options.max_gap_ns:
                self.bridging = Resampler(tags, methods, layout.period, bridged)
        else:
            moved = tags.moved_from(self.tags)
            self.natural.retable(tags, methods, moved, natural)
            if self.bridging is not None:
                self.bridging.retable(tags, methods, moved, bridged)
        self.tags = tags
        self.schema = _schema(layout, self.bridging is not None)
        self.factor = np.array([c.factor for c in columns])
        self.offset = np.array([c.offset for c in columns])

    def holds(self, layout: _Layout) -> bool:
        """Whether the cells made so far are those of ``layout``."""
        numbers = {c.number for c in layout.columns}
        return (
            self.layout.cells() == layout.cells()
            and self.layout.grid() == layout.grid()
            and (not self.unplaced & numbers)
        )

    def add(self, stored: Stored) -> None:
        """One batch, in window order: the chunks before its window are resampled first
        (a row stored later than that is counted late and left out)."""
        while stored.footer.window_start >= self.low + self.layout.chunk_ns and (
            self.end is None or self.low < self.end
        ):
            self._next_chunk()
        if stored.table is not None:
            self._builder.add(stored.footer.gateway, stored.table)

    def finish(self, end: int) -> None:
        """The chunks up to ``end``, and the last one held back by the resamplers."""
        self.end = end
        while self.low < end:
            self._next_chunk()
        assert self.natural is not None
        wide = self.natural.flush()
        bridged = self.bridging.flush() if self.bridging is not None else []
        if wide:
            self._write(*self._cells_of(wide[0], bridged[0] if bridged else None))
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def discard(self) -> None:
        """Remove the parts (written into the table, or invalidated)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for part in self.parts:
            part.unlink(missing_ok=True)

    def describe(self, data: str) -> dict[str, Any]:
        layout = self.layout
        end = self.end or layout.start
        return {
            "file": data,
            "format": self.options.format,
            "period": format_duration(layout.period),
            "period_ns": layout.period,
            "from_ns": layout.start,
            "to_ns": end,
            "rows": (end - layout.start) // layout.period,
            "max_gap": format_duration(self.options.max_gap_ns),
            "late_samples_left_out": self.late,
        }

    def _next_chunk(self) -> None:
        part = self._builder.take()
        if part is not None:
            self._held.append(part)
        chunk = self.layout.chunk_ns
        high = self.low + chunk if self.end is None else min(self.low + chunk, self.end)
        batch = self._batch(self.low, high)
        assert self.natural is not None
        wide = self.natural.feed(batch)
        bridged = self.bridging.feed(batch) if self.bridging is not None else []
        if wide:
            self._write(*self._cells_of(wide[0], bridged[0] if bridged else None))
        self._held = [_after(c, self.low + chunk) for c in self._held]
        self.low += chunk

    def _write(self, values: np.ndarray, filled: np.ndarray) -> None:
        """A chunk of the table, into the part of its column set."""
        if self._writer is None or self.schemas[-1] != self.schema:
            if self._writer is not None:
                self._writer.close()
            self.folder.mkdir(parents=True, exist_ok=True)
            self.parts.append(self.folder / f".data.part{len(self.parts)}.parquet")
            self.schemas.append(self.schema)
            self._writer = TableWriter(self.parts[-1], self.schema, "parquet")
        self.stats.add(values, filled, self.numbers)
        first = self.layout.start + self.cells * self.layout.period
        self.cells += values.shape[0]
        times = first + np.arange(values.shape[0], dtype=np.int64) * self.layout.period
        self._writer.write(self._table(values, filled, times))

    def _table(self, values: np.ndarray, filled: np.ndarray, times: np.ndarray) -> pa.Table:
        arrays = [pa.Array.from_buffers(TIME, times.shape[0], [None, pa.py_buffer(times)])]
        for index in range(len(self.layout.columns)):
            column = values[:, index]
            arrays.append(pa.array(column, pa.float64(), from_pandas=True))
            if self.bridging is not None:
                arrays.append(pa.array(filled[:, index], pa.bool_()))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _batch(self, low: int, high: int) -> Batch:
        """The rows in [low, high) as a batch the resampler takes; rows before ``low`` came
        late for a chunk already resampled and are counted out."""
        parts = [c for c in self._held if len(c)]
        if parts:
            series = np.concatenate([c.series for c in parts])
            time = np.concatenate([c.time for c in parts])
            value = np.concatenate([c.value for c in parts])
            quality = np.concatenate([c.quality for c in parts])
        else:
            series, time = np.empty(0, np.int64), np.empty(0, np.int64)
            value, quality = np.empty(0), np.empty(0, np.uint16)
        self.late += int(np.count_nonzero(time < low))
        lookup = np.full(self.series.count, -1, np.int64)
        lookup[self.numbers] = self.order
        gtag = lookup[series]
        unplaced = gtag < 0
        if unplaced.any():
            self.unplaced.update(np.unique(series[unplaced]).tolist())
        inside = (time >= low) & (time < high) & ~unplaced
        gtag = gtag[inside]
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
