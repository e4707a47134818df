"""``edge-agent report`` and ``export`` over a day of the simulator mix at 100 ms.

Why: issue 16 asks that a day of data be reported on and exported on the gateway itself,
or the laptop of whoever picks the dataset up, in under a minute and a gigabyte. The day is
built, not waited for: simulators/dataset.py drives the agent's own pipeline, quality
tally, batcher and encoder with the simulators' values (the "simulator mix" of
bench/bench_wire.py: the PLC's 26 numeric tags, the CNC's 12 scalar nodes and the SCADA
publisher's 10 plant tags, all at 100 ms, times on the tick, in the default 1 s windows or
``--window``), so the 86,400 files are the files the agent writes. It is built once into
``--data`` and reused.

Each command then runs as its own process, as a user would run it; wall time is measured
around it, CPU time and peak RSS are the child's (os.wait4: ``ru_utime + ru_stime``,
``ru_maxrss``), and the 1-minute load average before it says how busy the machine was.

    python bench/bench_report.py --hours 24 --data /var/tmp/edge-bench-day
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_wire import mix_sources

from simulators.dataset import write_dataset

S = 1_000_000_000
T0 = 1_795_000_000 * S  # 2026-11-18T06:13:20Z: a whole minute


def build(data: Path, hours: float, window_s: float) -> None:
    """The dataset, unless a complete one is there already (a marker file says so)."""
    marker = data / ".complete"
    wanted = {"hours": hours} | ({"window_s": window_s} if window_s != 1 else {})
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return
    sources, tables = mix_sources()
    truth = {source.name: dict(tags) for source, tags in zip(sources, tables, strict=True)}

    def values(source: str, tag: str, times: np.ndarray) -> np.ndarray:
        return np.asarray(truth[source][tag](tag, times), np.float64)  # type: ignore[operator]

    started = time.perf_counter()
    batches = write_dataset(
        sources,
        values,
        data,
        T0,
        T0 + round(hours * 3600 * S),
        window_ns=round(window_s * S),
        gateway="bench-gw",
        jitter_ns=0,
    )
    print(f"built {batches} batches in {time.perf_counter() - started:.0f} s under {data}")
    marker.write_text(json.dumps(wanted))


def measure(name: str, args: list[str]) -> dict[str, object]:
    """Run ``edge-agent ARGS`` in a child process: wall seconds and its peak RSS."""
    command = [sys.executable, "-m", "agent.commands.cli", *args]
    load = os.getloadavg()[0]  # the machine is shared: what else was running
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    error = child.stderr.read().decode() if child.stderr else ""
    if child.returncode:
        raise SystemExit(f"{name} failed ({child.returncode}): {error}")
    result = {
        "command": name,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": usage.ru_maxrss // 1024,
        "load_before": round(load, 1),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--window", type=float, default=1.0, help="batch window, seconds")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "edge-bench-day")
    args = parser.parse_args()
    build(args.data, args.hours, args.window)
    files = list(args.data.rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    print(f"dataset: {len(files)} files, {size / 1e6:.0f} MB")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        data = str(args.data)
        measure("report (text, footers only)", ["report", data])
        measure("report --json", ["report", data, "--json", str(out / "report.json")])
        measure("report --html", ["report", data, "--html", str(out / "report.html")])
        page = (out / "report.html").stat().st_size
        print(f"html page: {page / 1e6:.1f} MB")
        measure("export (parquet)", ["export", data, "--out", str(out / "export")])
        measure(
            "export (csv, --max-gap 1s, --normalize zscore)",
            [
                "export",
                data,
                "--out",
                str(out / "csv"),
                "--format",
                "csv",
                "--max-gap",
                "1s",
                "--normalize",
                "zscore",
            ],
        )
        exported = out / "export" / "data.parquet"
        print(f"export: {exported.stat().st_size / 1e6:.0f} MB parquet")


if __name__ == "__main__":
    main()
