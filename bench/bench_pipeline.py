"""Pipeline throughput per stage, and swinging-door compression on the simulator's signals.

Why: at 100 ms polling a gateway's frames hold one sample of each of thousands of tags, so
the stages must be vectorised across tags; this measures whether the edge processing keeps
up on one core (goal: >= 1 M points/s with deadband + swinging door + batching + encoding)
and what each stage costs. Synthetic frames of ``--tags`` tags (noisy sines of random
period and phase, one sample per tag per 100 ms frame) go through a ``SourcePipeline``
built from tag configs, alone ("pipeline") and followed by the Batcher cutting 1 s windows
and each batch encoded to zstd Parquet in memory ("+batch+encode"). Points/s counts input
samples per CPU second of this process (``time.process_time``), median of ``--repeat``.

The second table sends block frames (8 tags, ``--block`` samples each, as a waveform
read) through single stages. The third table replays ``--minutes`` of each CncSignals
signal at 100 ms through the swinging door with deviation = 0.5 % of the signal's span
and reports the kept fraction and the measured maximum error of linear interpolation
between kept points.

    python bench/bench_pipeline.py --tags 10000 --frames 200 --repeat 3
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agent.acquisition.frame import Frame, concat
from agent.acquisition.pipeline import SourcePipeline
from agent.config.model import SourceConfig, TagConfig
from agent.stages.swinging_door import SwingingDoorStage
from agent.windows.batch import Batcher, TagTable
from simulators.signals import CncSignals

S = 1_000_000_000
RATE = 100_000_000
T0 = 1_700_000_000 * S

Columns = tuple[np.ndarray, np.ndarray]  # time, value of one frame
STAGES: dict[str, dict[str, Any]] = {
    "none (no stage)": {},
    "units": {"unit": "degC", "convert_to": "K"},
    "range": {"range": [-150.0, 150.0]},
    "spike (rate)": {"spike": {"max_rate": 1000.0}},
    "spike (Hampel 9)": {"spike": {"window": 9, "threshold": 6.0}},
    "fill": {"fill": {"max_gap": "1s"}},
    "features 1s": {"features": {"window": "1s"}},
    "deadband 0.5%": {"deadband": 1.0},
    "swinging door 0.5%": {"swinging_door": {"deviation": 1.0}},
    "deadband + swinging door": {"deadband": 0.5, "swinging_door": {"deviation": 1.0}},
}
STAGES["all stages"] = {
    "unit": "degC",
    "convert_to": "K",  # affine: the range below is the same +-150 band in kelvin
    "range": [273.15 - 150, 273.15 + 150],
    "spike": {"max_rate": 1000.0, "window": 9, "threshold": 6.0},
    "fill": {"max_gap": "1s"},
    "features": {"window": "1s"},
    "deadband": 0.5,
    "swinging_door": {"deviation": 1.0},
}


def synthetic_frames(tags: int, frames: int, seed: int = 1) -> list[Columns]:
    rng = np.random.default_rng(seed)
    period_s = rng.uniform(30, 600, tags)
    phase = rng.uniform(0, 2 * np.pi, tags)
    out: list[Columns] = []
    for k in range(frames):
        seconds = k * RATE / S
        value = 100 * np.sin(2 * np.pi * seconds / period_s + phase) + rng.normal(0, 0.1, tags)
        out.append((np.full(tags, T0 + k * RATE, np.int64), value))
    return out


def make_frame(tags: int, columns: Columns) -> Frame:
    time_, value = columns
    return Frame(
        np.arange(tags, dtype=np.int32), time_.copy(), value.copy(), np.zeros(tags, np.uint16)
    )


def encode(table: pa.Table) -> int:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", use_dictionary=["source", "tag"])
    return sink.tell()


def run(
    tags: int, data: list[Columns], config: dict[str, Any], batching: bool
) -> tuple[float, int]:
    """CPU seconds and points out for one pass over the frames."""
    tag_configs = [
        TagConfig.model_validate({"name": f"t{i}", "rate": "100ms", **config}) for i in range(tags)
    ]
    pipeline = SourcePipeline(tag_configs)
    source = SourceConfig(name="bench", protocol="bench", tags=tag_configs)
    batcher = Batcher(TagTable([source]), S, 0, "bench", "0")
    frames = [make_frame(tags, columns) for columns in data]
    kept = 0
    start = time.process_time()
    for k, frame in enumerate(frames):
        out = pipeline.process(frame)
        kept += len(out)
        if batching:
            batcher.add(0, out)
            if k % 10 == 9:
                for batch in batcher.close_due(int(frame.time[0]) + RATE):
                    encode(batch.table)
    if batching:
        for batch in batcher.flush():
            encode(batch.table)
    return time.process_time() - start, kept


def throughput(args: argparse.Namespace) -> None:
    data = synthetic_frames(args.tags, args.frames)
    points = args.tags * args.frames
    print(
        f"{args.tags} tags x {args.frames} frames (one sample per tag per 100 ms frame) = "
        f"{points:,} points; median of {args.repeat}; points/s per CPU second\n"
    )
    header = f"{'stages':<26} {'pipeline':>12} {'+batch+encode':>14} {'kept':>7}"
    print(header + "\n" + "-" * len(header))
    for name, config in STAGES.items():
        if args.only and args.only not in name:
            continue
        rates = {}
        for batching in (False, True):
            runs = [run(args.tags, data, config, batching) for _ in range(args.repeat)]
            rates[batching] = points / statistics.median(cpu for cpu, _ in runs)
            kept = runs[0][1]
        alone = f"{rates[False]:>12,.0f}" if config else f"{'-':>12}"  # nothing to time
        print(f"{name:<26} {alone} {rates[True]:>14,.0f} {kept / points:>7.1%}")


BLOCK_STAGES: dict[str, dict[str, Any]] = {
    "denoise": {"denoise": {}},
    "features 1s": {"features": {"window": "1s"}},
    "deadband 0.5%": {"deadband": 1.0},
    "swinging door 0.5%": {"swinging_door": {"deviation": 1.0}},
}


def blocks(args: argparse.Namespace) -> None:
    """Block frames: a few tags, ``--block`` samples each (a waveform read), 1 frame/s."""
    tags, block, frames = 8, args.block, 20
    rng = np.random.default_rng(2)
    within = np.arange(block, dtype=np.int64) * (S // block)
    data = []
    for k in range(frames):
        seconds = (k * S + within) / S
        wave = 100 * np.sin(2 * np.pi * 2 * seconds)[None, :] + rng.normal(0, 0.1, (tags, block))
        data.append((np.tile(T0 + k * S + within, tags), wave.ravel()))
    points = tags * block * frames
    print(f"\nBlock frames: {tags} tags x {block} samples per frame, {frames} frames\n")
    header = f"{'stages':<26} {'pipeline':>12} {'kept':>7}"
    print(header + "\n" + "-" * len(header))
    for name, config in BLOCK_STAGES.items():
        configs = [TagConfig.model_validate({"name": f"t{i}", **config}) for i in range(tags)]
        runs, kept = [], 0
        for _ in range(args.repeat):
            pipeline = SourcePipeline(configs)
            built = [
                Frame(
                    np.repeat(np.arange(tags, dtype=np.int32), block),
                    t.copy(),
                    v.copy(),
                    np.zeros(tags * block, np.uint16),
                )
                for t, v in data
            ]
            start = time.process_time()
            kept = sum(len(pipeline.process(f)) for f in built)
            runs.append(time.process_time() - start)
        print(f"{name:<26} {points / statistics.median(runs):>12,.0f} {kept / points:>7.1%}")


def compression(args: argparse.Namespace) -> None:
    signals = CncSignals(seed=1)
    n = int(args.minutes * 60 * S / RATE)
    times = T0 + np.arange(n, dtype=np.int64) * RATE
    print(
        f"\nSwinging door, deviation = 0.5 % of span, {args.minutes:g} min at 100 ms "
        f"({n} samples), CncSignals(seed=1)\n"
    )
    header = f"{'signal':<15} {'span':>10} {'deviation':>10} {'kept':>7} {'max error':>10}"
    print(header + "\n" + "-" * len(header))
    names: list[str] = [n for n in signals.functions if n not in ("vibration",)]
    for name in names:
        value = signals.functions[name](signals.scan_time(times)).astype(np.float64)
        span = float(value.max() - value.min())
        if span == 0:
            continue
        deviation = 0.005 * span
        stage = SwingingDoorStage([deviation], [10**15], [0], [True])
        parts = [
            stage.process(
                Frame(
                    np.zeros(1, np.int32),
                    times[i : i + 1],
                    value[i : i + 1],
                    np.zeros(1, np.uint16),
                )
            )
            for i in range(n)
        ]
        kept = concat([p for p in [*parts, stage.flush()] if len(p)])
        order = np.argsort(kept.time)
        kt, kv = kept.time[order], kept.value[order]
        error = np.abs(np.interp((times - T0).astype(float), (kt - T0).astype(float), kv) - value)
        print(
            f"{name:<15} {span:>10.4g} {deviation:>10.4g} {len(kt) / n:>7.2%} {error.max():>10.4g}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--frames", type=int, default=200, help="100 ms frames per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=10.0, help="signal length, table 3")
    parser.add_argument("--block", type=int, default=1024, help="samples per block, table 2")
    parser.add_argument("--only", help="run the stage sets whose name contains this")
    parser.add_argument("--skip", choices=["throughput", "blocks", "compression"])
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}")
    sections: dict[str, Callable[[argparse.Namespace], None]] = {
        "throughput": throughput,
        "blocks": blocks,
        "compression": compression,
    }
    for name, section in sections.items():
        if name != args.skip:
            section(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
