"""Bytes per point on the wire, spool write throughput, and replay after a long outage.

Why: a gateway on a cellular or plant-WAN link pays for every byte, and a spool that
cannot keep up with acquisition, or a backlog that takes longer to replay than the outage
lasted, loses data in practice. Everything here uses the real parts: the simulators'
seeded signals (exactly the values the agent would read), the Batcher, the spool's
encoding, an SQLite spool on local disk, and the parquet uplink.

The "simulator mix" is the Modbus PLC's 27 tags, the OPC UA CNC's 13 scalar nodes and the
SCADA publisher's plant tags, all at 100 ms with times on the tick (``snap``), the way a
configured gateway would store them. The vibration waveform (5,000 noise-like float
samples a second) is left out: raw waveforms are no trend data, and would dominate any mix.

    python bench/bench_wire.py --minutes 10 --outage-minutes 60

``--columns`` prints where a file's bytes go (issue 17): per column, the footer's
structure and its key-value metadata, at 1 s and 10 s windows, and each column's size at
zstd levels 1-22, the measurement :data:`agent.store.encoding.LEVELS` was chosen by.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agent.acquisition.frame import Frame
from agent.acquisition.pipeline import SourcePipeline
from agent.config.model import ParquetUplinkConfig
from agent.store.encoding import LEVELS, batch_of, decode, encode
from agent.store.spool import Spool
from agent.uplinks.parquet import ParquetUplink
from agent.windows.batch import Batch, Batcher, TagTable
from agent.windows.dataquality import QualityTally
from protocols._template.driver import TemplateSourceConfig
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from simulators.mqtt_scada import PLANT, MqttScadaSimulator
from simulators.opcua_cnc import NODES, OpcUaCncSimulator

MS = 1_000_000
S = 1_000_000_000
T0 = 1_795_000_000 * S


# the tags whose values carry sensor noise at full precision (float64 or float32 noise,
# noisy decimals): where an instrument's resolution applies
NOISY = frozenset(
    {"torque", "torque_badc", "feed_rate", "feed_rate_cdab", "coolant_temp", "vibration_rms"}
    | {"spindle_torque", "spindle_temp", "axis_x", "axis_y", "axis_z"}
    | {"PT101", "TT101", "LT101", "FT101", "FT102", "TT201", "FT201", "LT201"}
)


def mix_sources(
    resolution: float | None = None,
) -> tuple[list[TemplateSourceConfig], list[list[tuple[str, object]]]]:
    """Three sources of the simulators' numeric tags, and per source (tag, truth fn); with
    ``resolution``, the noisy tags have it."""
    plc, cnc, scada = ModbusPLCSimulator(seed=1), OpcUaCncSimulator(seed=1), MqttScadaSimulator(1)
    modbus = [(p.name, plc.truth) for p in POINTS if p.type != "string"]
    opcua = [(n.name, cnc.truth) for n in NODES if not n.array and n.type != "String"]
    plant = [(t.name, scada.truth) for t in PLANT]
    tables = [modbus, opcua, plant]

    def tag(name: str) -> dict[str, object]:
        extra = {"resolution": resolution} if resolution and name in NOISY else {}
        return {"name": name, "rate": "100ms", **extra}

    sources = [
        TemplateSourceConfig(name=name, tags=[tag(name) for name, _ in tags])
        for name, tags in zip(("plc1", "cnc1", "scada"), tables, strict=True)
    ]
    return sources, tables


def mix_batches(minutes: float, window_s: int, resolution: float | None = None) -> list[Batch]:
    """The batches the agent would send, data-quality figures included: the tally's clock
    stands at the start of the run and then at its end, as if it had just been read. The
    values pass the sources' pipelines (the ``resolution`` rounding; nothing else is
    configured)."""
    sources, tables = mix_sources(resolution)
    table = TagTable(sources)
    ticks = T0 + np.arange(int(minutes * 600), dtype=np.int64) * 100 * MS
    now = [T0]
    tally = QualityTally(
        table.source_offset, table.tag_source, table.rate_ns, window_s * S, lambda: now[0]
    )
    batcher = Batcher(table, window_s * S, 0, "gw01", "bench", tally)
    pipelines = [SourcePipeline(source.tags) for source in sources]
    for index, tags in enumerate(tables):
        for slot, (name, truth) in enumerate(tags):
            values = np.asarray(truth(name, ticks), np.float64)  # type: ignore[operator]
            frame = Frame(
                np.full(ticks.shape[0], slot, np.int32),
                ticks,
                values,
                np.zeros(ticks.shape[0], np.uint16),
            )
            tally.add(index, frame)
            batcher.add(index, pipelines[index].process(frame))
    now[0] = int(ticks[-1]) + 100 * MS
    return batcher.flush()


def json_lines(batch: Batch) -> bytes:
    """The same samples as JSON lines, the way many gateways publish them."""
    table = batch.table
    times = table["time"].cast(pa.int64()).to_numpy() // 1_000_000
    sources = table["source"].cast(pa.string()).to_pylist()
    tags = table["tag"].cast(pa.string()).to_pylist()
    values = table["value"].to_pylist()
    quality = table["quality"].to_pylist()
    lines = [
        json.dumps({"ts": int(t), "source": s, "tag": g, "value": v, "quality": qu})
        for t, s, g, v, qu in zip(times, sources, tags, values, quality, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


def arrow_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def wire(minutes: float) -> None:
    print(f"bytes per point, simulator mix ({minutes:g} min at 100 ms):")
    print(
        f"  {'window':>6} {'resolution':>10} {'points':>9} {'parquet':>8} {'arrow ipc':>9} "
        f"{'json':>8} {'parquet ms':>10} {'ipc ms':>7} {'json/parquet':>12}"
    )
    for window, resolution in ((1, None), (10, None), (1, 0.01), (10, 0.01)):
        batches = mix_batches(minutes, window, resolution)
        points = sum(b.points for b in batches)
        start = time.process_time()
        parquet = sum(len(encode(b.table)) for b in batches)
        parquet_ms = (time.process_time() - start) * 1e3 / len(batches)
        start = time.process_time()
        ipc = sum(len(arrow_ipc(b.table)) for b in batches)
        ipc_ms = (time.process_time() - start) * 1e3 / len(batches)
        lines = sum(len(json_lines(b)) for b in batches)
        print(
            f"  {window:>5}s {resolution or 'lossless':>10} {points:>9} "
            f"{parquet / points:>8.3f} {ipc / points:>9.3f} "
            f"{lines / points:>8.2f} {parquet_ms:>10.2f} {ipc_ms:>7.2f} "
            f"{lines / parquet:>11.1f}x"
        )


def _file_parts(data: bytes) -> dict[str, int]:
    """Where one encoded batch's bytes go: each column chunk (pages, headers), the footer's
    key-value metadata, the rest of the footer (schema, column-chunk metadata, writer
    name), and the magic numbers and footer length."""
    metadata = pq.ParquetFile(pa.BufferReader(data)).metadata
    footer = int.from_bytes(data[-8:-4], "little")
    pairs = sum(len(k) + len(v) for k, v in (metadata.metadata or {}).items())
    group = metadata.row_group(0)
    parts = {
        group.column(i).path_in_schema: group.column(i).total_compressed_size
        for i in range(group.num_columns)
    }
    parts["key-value metadata"] = pairs
    parts["footer structure"] = footer - pairs
    parts["magic, length"] = 12
    return parts


def columns(minutes: float) -> None:
    """Per window size, the average file's bytes by part; then each column's bytes at
    each zstd level over the same batches."""
    for window, resolution in ((1, None), (10, None), (10, 0.01)):
        batches = mix_batches(minutes, window, resolution)
        encoded = [encode(b.table) for b in batches if b.points]
        points = sum(b.points for b in batches if b.points) / len(encoded)
        total: dict[str, int] = {}
        for data in encoded:
            for part, size in _file_parts(data).items():
                total[part] = total.get(part, 0) + size
        label = f"{window} s" + (f", resolution {resolution}" if resolution else "")
        print(
            f"bytes per file, {label} ({points:.0f} points, "
            f"{sum(len(d) for d in encoded) / len(encoded):.0f} bytes):"
        )
        for part, size in total.items():
            share = size / len(encoded)
            print(f"  {part:<20} {share:>8.0f} B {share / points:>7.3f} B/pt")
        print(f"  zstd level per column (bytes per file), encoding ms per file; chosen: {LEVELS}")
        for level in (1, 3, 9, 15, 19, 22):
            start = time.process_time()
            sizes: dict[str, int] = {}
            for b in batches:
                if b.points:
                    parts = _file_parts(encode(b.table, level=level))
                    for name in LEVELS:
                        sizes[name] = sizes.get(name, 0) + parts.get(name, 0)
            elapsed = (time.process_time() - start) * 1e3 / len(encoded)
            row = " ".join(f"{name} {size / len(encoded):>6.0f}" for name, size in sizes.items())
            print(f"    level {level:>2}: {row}  {elapsed:.2f} ms")


def _transforms(values: np.ndarray) -> list[bytes]:
    """Lossless re-encodings of one tag's float64 values that zstd may like better: the raw
    bytes, byte planes, XOR with the previous value (Gorilla), float32 byte planes when
    every value is a float32, and deltas of the decimal integers when every value is a
    decimal of up to 8 places (ALP's idea)."""

    def planes(array: np.ndarray) -> bytes:
        return array.view(np.uint8).reshape(-1, array.itemsize).T.tobytes()

    bits = values.view(np.uint64)
    out = [
        values.tobytes(),
        planes(values),
        planes(np.concatenate([bits[:1], bits[1:] ^ bits[:-1]])),
    ]
    single = values.astype(np.float32)
    if np.array_equal(single.astype(np.float64), values):
        out.append(planes(single))
    for places in range(9):
        scaled = np.round(values * 10.0**places)
        if np.all(np.abs(scaled) < 2**52) and np.array_equal(scaled / 10.0**places, values):
            out.append(planes(np.diff(scaled.astype(np.int64), prepend=0)))
            break
    return out


def value_floor(minutes: float) -> None:
    """How small the value column could get with a codec Parquet does not have: per tag
    and 10 s batch the best of :func:`_transforms`, all tags in one zstd stream."""
    _, tables = mix_sources()
    total = points = 0
    for window in range(int(minutes * 6)):
        ticks = T0 + (window * 100 + np.arange(100, dtype=np.int64)) * 100 * MS
        streams = []
        for tags in tables:
            for name, truth in tags:
                values = np.asarray(truth(name, ticks), np.float64)  # type: ignore[operator]
                candidates = _transforms(values)
                sizes = [len(pa.compress(c, "zstd", asbytes=True)) for c in candidates]
                streams.append(candidates[int(np.argmin(sizes))])
                points += values.shape[0]
        total += len(pa.compress(b"".join(streams), "zstd", asbytes=True))
    print(
        f"value column with the best lossless transform per tag (10 s batches, one zstd "
        f"stream): {total / points:.3f} B/point"
    )


def spool_throughput(minutes: float) -> None:
    _, tables = mix_sources()
    n_tags = sum(len(t) for t in tables)
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool.sqlite", ["u"])
        frames = int(minutes * 600)
        tags = np.arange(len(tables[0]), dtype=np.int32)
        start = time.perf_counter()
        for k in range(frames):
            t = T0 + k * 100 * MS
            frame = Frame(
                tags,
                np.full(tags.shape[0], t),
                np.random.rand(tags.shape[0]),
                np.zeros(tags.shape[0], np.uint16),
            )
            spool.append_frame(0, frame)
        elapsed = time.perf_counter() - start
        print(
            f"spool append: {frames / elapsed:,.0f} frames/s "
            f"({frames * tags.shape[0] / elapsed:,.0f} points/s at {tags.shape[0]} tags/frame)"
        )
        batches = mix_batches(minutes, 10)
        encoded = [dataclasses.replace(b, data=encode(b.table)) for b in batches]
        start = time.perf_counter()
        for batch in encoded:
            spool.commit_batches([batch], batch.window_end_ns)
        elapsed = time.perf_counter() - start
        points = sum(b.points for b in batches)
        print(
            f"spool commit (fsync per batch, {n_tags} tags, 10 s windows): "
            f"{len(batches) / elapsed:,.0f} batches/s, {points / elapsed:,.0f} points/s"
        )


def replay(outage_minutes: float) -> None:
    """An hour of 10 s batches waiting in the spool, then sent to a parquet uplink."""
    batches = mix_batches(outage_minutes, 10)
    points = sum(b.points for b in batches)
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool.sqlite", ["parquet"])
        for batch in batches:
            spool.commit_batches([batch], batch.window_end_ns)
        uplink = ParquetUplink(ParquetUplinkConfig(path=str(Path(tmp) / "store")))
        start = time.perf_counter()
        sent = 0
        while pending := spool.pending("parquet", limit=32):
            for item in pending:
                data = spool.data(item.seq)
                uplink._write(batch_of(decode(data), data))  # the uplink's own write path
                spool.acknowledge("parquet", item.seq)
                sent += 1
        elapsed = time.perf_counter() - start
    print(
        f"replay of a {outage_minutes:g} min outage ({sent} batches, {points:,} points) to a "
        f"local parquet uplink: {elapsed:.1f} s, {sent / elapsed:,.0f} batches/s, "
        f"{points / elapsed:,.0f} points/s, {outage_minutes * 60 / elapsed:,.0f}x real time "
        "(uncapped; the agent caps replay at spool.replay_rate batches/s beside live data)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--outage-minutes", type=float, default=60.0)
    parser.add_argument("--columns", action="store_true", help="where a file's bytes go")
    args = parser.parse_args()
    if args.columns:
        columns(args.minutes)
        return 0
    wire(args.minutes)
    value_floor(args.minutes)
    spool_throughput(args.minutes)
    replay(args.outage_minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
