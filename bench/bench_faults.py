"""The fault matrix: each fault against a running agent, and the books balanced number by
number afterwards.

Why: the fault tests (``tests/faults/``) assert each behaviour at the shortest length that
shows it; this runs every fault as a plant would meet it, against ``edge-agent run`` as
its own process on the Modbus simulator's sequence register (every read a fresh number,
``tests/faults/harness.py``), and prints one row per fault, each also with a SIGKILL of
the agent in the middle of the fault (``+kill``):

- **acquired**: numbers the simulator served; **stored**: distinct numbers in the store;
  **lost (counted)**: the spool's ``losses`` table by reason, plus the points of the
  quarantine's sidecars (``quarantined``);
- **in flight**: numbers served in the last poll before an agent process ended (a kill or
  a stop) and neither stored nor counted: the one poll a kill may take with it;
- **size unknown**: numbers in batches or frame records the agent reports lost without a
  size (``batches_lost_of_unknown_size``, ``corrupt_records_of_unknown_size`` in its log),
  at most their count times the most a batch (6) or a record (1) can hold here;
- **unaccounted**: acquired - stored - counted - in flight - size unknown (must be 0;
  negative means counted twice); **dup**: rows beyond the first of a number (must be 0);
- **resume s**: from the fault's end (space freed, the peer back, or, for damage found at
  start, the agent's last start) to the store's file holding the first number served
  after it (its mtime): includes the 500 ms window and 200 ms lateness;
- **caught up s**: from the fault's end until the spool holds at most one batch (the
  backlog delivered; replay is capped at ``spool.replay_rate``, 10 batches/s by default).
  The agent is stopped only then, so that nothing is left in its spool at the count;
- **RSS MiB**: the highest ``VmHWM`` of the row's agent processes.

Faults: ``disk`` (data_dir on a 4 MiB tmpfs filled ~10 s, then freed; needs root),
``bitrot`` (a byte flipped in a spooled batch while the agent is stopped), ``torn``
(spool.sqlite cut to half its size while stopped), ``frame`` (64 garbage bytes in the
middle of a frame-log segment of a SIGKILLed agent), ``device`` (the PLC stopped and
restarted on its port), ``broker`` (an mqtt uplink's private mosquitto stopped and
started; a collector in this process writes to Parquet). Default settings throughout
except the 500 ms windows and a 300 ms Modbus timeout.

    python bench/bench_faults.py                  # every row, about 8 minutes
    python bench/bench_faults.py --short          # 10 s outages only
    python bench/bench_faults.py --only disk,bitrot --no-kill
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from tempfile import mkdtemp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' harness, and this tree's agent over any install

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from agent.acquisition import quality as q  # noqa: E402
from agent.commands.collect import Collector  # noqa: E402
from agent.ops.logs import configure  # noqa: E402
from simulators.modbus_plc import ModbusPLCSimulator  # noqa: E402
from simulators.mqtt_broker import PrivateBroker, broker_class, private_broker  # noqa: E402
from tests.faults.harness import (  # noqa: E402
    balance,
    quarantined_points,
    sequence_source,
    spool_losses,
)
from tests.faults.test_forwarding_faults import flip_a_byte  # noqa: E402
from tests.faults.test_storage_full import fill  # noqa: E402
from tests.uplinks.helpers import collect_config  # noqa: E402

WINDOW_MAX_POINTS = 6  # a 500 ms window of one tag polled every 100 ms, and one more
RESUME_TIMEOUT_S = 60.0
FAMILIES = ("disk", "bitrot", "torn", "frame", "device", "broker")


class Skip(Exception):
    """A row that cannot run here, with the reason."""


async def until_true(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {seconds:.0f} s")
        await asyncio.sleep(0.1)


# -- the agent as its own process ---------------------------------------------------------


@dataclass
class Run:
    """One row's world: the PLC, the agent's config and log, and what its processes did."""

    directory: Path
    plc: ModbusPLCSimulator
    state: Path
    store: Path
    uplink: str
    exits_last_served: list[int] = field(default_factory=list)
    return_codes: list[int] = field(default_factory=list)  # of the SIGTERM stops
    died: list[int] = field(default_factory=list)  # exit codes of agents that ended alone
    broker: PrivateBroker | None = None
    rss_kib: int = 0
    process: asyncio.subprocess.Process | None = None

    @property
    def log(self) -> Path:
        return self.directory / "agent.log"

    @property
    def last_served(self) -> int:
        return self.plc.served_sequence[-1] if self.plc.served_sequence else 0

    async def start(self) -> None:
        config = self.directory / "agent.toml"
        config.write_text(
            f'[agent]\ngateway_id = "bench"\nmetrics = ""\nlog_format = "json"\n'
            f'data_dir = "{self.state}"\n'
            '[batch]\nwindow = "500ms"\nlateness = "200ms"\n'
            '[spool]\ndrain_timeout = "3s"\n'
            f"{self.uplink}\n" + sequence_source(self.plc.port, short_backoff=False)
        )
        with self.log.open("ab") as log:  # the child keeps its own descriptor
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent.commands.cli", "run", "-c", str(config),
                stdout=asyncio.subprocess.DEVNULL, stderr=log, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    def _sample_rss(self) -> None:
        assert self.process is not None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.rss_kib = max(self.rss_kib, int(line.split()[1]))

    async def sleep(self, seconds: float) -> None:
        """Sleep, sampling the agent's peak RSS on the way (it is gone after an exit)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.process is not None and self.process.returncode is None:
                self._sample_rss()
            await asyncio.sleep(min(0.5, left))

    async def end(self, how: signal.Signals) -> None:
        """SIGKILL or SIGTERM the agent and wait for its exit."""
        assert self.process is not None
        if self.process.returncode is None:
            self._sample_rss()
            self.process.send_signal(how)
        else:
            self.died.append(self.process.returncode)
        code = await asyncio.wait_for(self.process.wait(), 60)
        self.exits_last_served.append(self.last_served)
        if how == signal.SIGTERM:
            self.return_codes.append(code)
        self.process = None

    async def kill_and_restart(self) -> None:
        await self.end(signal.SIGKILL)
        await self.start()

    def logged(self, event: str) -> list[dict[str, object]]:
        """The agent's JSON log records whose event starts with ``event``."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and str(record.get("event", "")).startswith(event):
                    found.append(record)
        return found


def store_files(store: Path) -> list[Path]:
    return list(store.rglob("*.parquet")) if store.is_dir() else []


async def resumed_after(store: Path, after: int, since_ns: int) -> float | None:
    """Seconds from ``since_ns`` to the mtime of the first store file holding a good
    number above ``after``; None if none came within RESUME_TIMEOUT_S."""
    seen: set[Path] = set()
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    while time.monotonic() < deadline:
        first: int | None = None
        for path in store_files(store):
            if path in seen:
                continue
            seen.add(path)
            with contextlib.suppress(OSError):
                mtime = path.stat().st_mtime_ns
                if newest_number(path) > after and (first is None or mtime < first):
                    first = mtime
        if first is not None:
            return max(0.0, (first - since_ns) / 1e9)
        await asyncio.sleep(0.25)
    return None


def newest_number(path: Path) -> int:
    table = pq.read_table(path, columns=["tag", "value", "quality"])
    rows = table.filter(pc.equal(table["tag"].cast(pa.string()), "seq"))
    severity = pc.bit_wise_and(rows["quality"], pa.scalar(q.SEVERITY_MASK, pa.uint16()))
    values = rows.filter(pc.equal(severity, q.GOOD))["value"].to_numpy()
    return int(values.max()) if values.size else 0


def spooled_batches(state: Path) -> int | None:
    """Batches in the spool not yet delivered (None if it cannot be read just now)."""
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{state / 'spool.sqlite'}?mode=ro", uri=True, timeout=1)
        ) as db:
            return int(db.execute("SELECT count(*) FROM batches").fetchone()[0])
    except sqlite3.Error:
        return None


async def caught_up(run: Run, since_ns: int) -> float | None:
    """Seconds from ``since_ns`` until the spool holds at most the live batch (the backlog
    delivered); None if not within RESUME_TIMEOUT_S. The final stop waits for this: a
    stop before leaves batches in the spool, neither stored nor lost."""
    deadline = time.monotonic() + RESUME_TIMEOUT_S
    while time.monotonic() < deadline:
        if (count := spooled_batches(run.state)) is not None and count <= 1:
            return max(0.0, (time.time_ns() - since_ns) / 1e9)
        await run.sleep(0.25)
    return None


async def started(run: Run) -> None:
    """The agent started, and its first batch stored."""
    await run.start()
    await until_true(lambda: bool(store_files(run.store)), 60, "first batch stored")
    await run.sleep(1.0)


async def settled(store: Path) -> None:
    """Until the store stops growing (a collector writing what the last drain sent)."""
    count, stable_since, deadline = -1, time.monotonic(), time.monotonic() + 20
    while time.monotonic() - stable_since < 2.0 and time.monotonic() < deadline:
        now = len(store_files(store))
        if now != count:
            count, stable_since = now, time.monotonic()
        await asyncio.sleep(0.25)


# -- the rows ---------------------------------------------------------------------------------


@dataclass
class Row:
    fault: str
    acquired: int = 0
    stored: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    size_unknown: int = 0
    unaccounted: int = 0
    duplicates: int = 0
    resume_s: float | None = None
    caught_up_s: float | None = None
    rss_mib: float = 0.0
    complete: bool = True
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fault:
    family: str
    title: str
    scenario: Callable[[Run], Awaitable[tuple[int, int]]]  # -> fault_end(run)


def parquet_uplink(store: Path) -> str:
    return f'[[uplinks]]\ntype = "parquet"\npath = "{store}"\n'


def fault_end(run: Run) -> tuple[int, int]:
    """The last number served before the fault ended, and when it ended."""
    return run.last_served, time.time_ns()


async def disk_full(run: Run, kill: bool) -> tuple[int, int]:
    await started(run)
    filler = fill(run.state.parent)
    if kill:
        await run.sleep(4.0)
        await run.kill_and_restart()  # on the still full disk
        await run.sleep(6.0)
    else:
        await run.sleep(10.0)
    filler.unlink()
    return fault_end(run)


async def spool_backlog(run: Run) -> None:
    """Batches piled up in the spool: the store's gateway folder is a file, so every
    write fails (the store itself must be writable, or ``run`` refuses to start)."""
    blocker = run.store / "gateway=bench"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"not a folder")
    await run.start()
    await run.sleep(4.0)
    await run.end(signal.SIGTERM)
    blocker.unlink()


async def restart_then_maybe_kill(run: Run, kill: bool, sign: Callable[[], bool]) -> None:
    """Start on the damage; with ``kill``, SIGKILL it once ``sign`` shows the damage was
    being handled, and start again."""
    await run.start()
    if kill:
        await until_true(sign, 60, "the damage handled")
        await run.sleep(0.3)
        await run.kill_and_restart()


async def bit_rot(run: Run, kill: bool) -> tuple[int, int]:
    await spool_backlog(run)
    flip_a_byte(run.state, 2)
    quarantine = run.state / "quarantine"
    await restart_then_maybe_kill(run, kill, lambda: any(quarantine.glob("*.json")))
    return fault_end(run)


async def torn_spool(run: Run, kill: bool) -> tuple[int, int]:
    await spool_backlog(run)
    spool = run.state / "spool.sqlite"
    os.truncate(spool, spool.stat().st_size // 2)
    await restart_then_maybe_kill(run, kill, lambda: bool(run.logged("spool damaged")))
    return fault_end(run)


async def frame_garbage(run: Run, kill: bool) -> tuple[int, int]:
    await started(run)
    await run.end(signal.SIGKILL)
    segments = sorted((run.state / "spool.frames").glob("*.log"), key=lambda p: p.stat().st_size)
    if not segments:
        raise Skip("no frame-log segment left by the kill")
    segment = segments[-1]
    data = bytearray(segment.read_bytes())
    middle = max(0, len(data) // 2 - 32)
    data[middle : middle + 64] = b"\xa5" * 64
    segment.write_bytes(bytes(data))
    await restart_then_maybe_kill(run, kill, lambda: bool(run.logged("frame log damaged")))
    return fault_end(run)


async def outage(
    run: Run, stop: Callable[[], Awaitable[object]], start: Callable[[], Awaitable[object]],
    seconds: float, kill: bool,
) -> tuple[int, int]:  # fmt: skip
    await started(run)
    await stop()
    if kill:
        await run.sleep(seconds / 2)
        await run.kill_and_restart()  # starts while the peer is away
        await run.sleep(seconds / 2)
    else:
        await run.sleep(seconds)
    await start()
    return fault_end(run)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        raise Skip("needs root to mount a small tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode:
        raise Skip(f"mount tmpfs failed: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def run_row(fault: Fault, directory: Path, seed: int) -> Row:
    row = Row(fault.title)
    async with contextlib.AsyncExitStack() as stack:
        plc = await stack.enter_async_context(ModbusPLCSimulator(seed=seed))
        state, store = directory / "state", directory / "store"
        uplink, broker = parquet_uplink(store), None
        if fault.family == "disk":
            disk = stack.enter_context(tmpfs(directory / "disk", "4m"))
            state = disk / "state"
        if fault.family == "broker":
            broker = await stack.enter_async_context(mqtt_broker(directory / "broker"))
            store = directory / "central"
            config = collect_config(broker.url, {"type": "parquet", "path": str(store)}, "bench-c")
            config = config.model_copy(
                update={"broker": config.broker.model_copy(update={"shared_group": ""})}
            )
            await stack.enter_async_context(collecting(Collector(config)))
            uplink = f'[[uplinks]]\ntype = "mqtt"\nurl = "{broker.url}"\nclient_id = "bench-gw"\n'
        run = Run(directory, plc, state, store, uplink, broker=broker)
        try:
            after, since_ns = await fault.scenario(run)
            row.resume_s = await resumed_after(store, after, since_ns)
            row.caught_up_s = await caught_up(run, since_ns)
            await run.sleep(2.0)
        finally:
            if run.process is not None:
                await run.end(signal.SIGTERM)
        if fault.family == "broker":
            await settled(store)
        balance_row(row, run)  # before the tmpfs is unmounted
    return row


@contextlib.asynccontextmanager
async def mqtt_broker(directory: Path) -> AsyncIterator[PrivateBroker]:
    if broker_class() is None:
        raise Skip("no MQTT broker (mosquitto or amqtt) installed")
    async with private_broker(directory) as broker:
        yield broker


@contextlib.asynccontextmanager
async def collecting(collector: Collector) -> AsyncIterator[Collector]:
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        await until_true(collector.subscribed.is_set, 30, "collector subscribed")
        yield collector
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def balance_row(row: Row, run: Run) -> None:
    served = list(run.plc.served_sequence)
    row.lost = {k: v for k, v in spool_losses(run.state).items() if v}
    if quarantined := quarantined_points(run.state):
        row.lost["quarantined"] = quarantined
    books = balance(served, run.store, lost=sum(row.lost.values()))
    row.acquired, row.stored, row.duplicates = books.acquired, books.stored, books.duplicates
    residual = books.unaccounted
    missing = set(books.missing)
    row.in_flight = min(max(residual, 0), sum(n in missing for n in set(run.exits_last_served)))
    unknown_batches = sum(
        int(str(r.get("batches_lost_of_unknown_size", 0))) for r in run.logged("spool damaged")
    )
    unknown_records = sum(
        int(str(r.get("corrupt_records_of_unknown_size", 0)))
        for r in run.logged("frame log damaged")
    )
    if unknown_batches or unknown_records:
        bound = unknown_batches * WINDOW_MAX_POINTS + unknown_records
        row.size_unknown = min(max(residual - row.in_flight, 0), bound)
        row.notes.append(
            f"agent reports {unknown_batches} batches and {unknown_records} frame records "
            f"lost of unknown size (at most {bound} numbers)"
        )
    row.unaccounted = residual - row.in_flight - row.size_unknown
    if row.unaccounted > 0:
        shown = books.missing[:12]
        more = " ..." if len(books.missing) > len(shown) else ""
        row.notes.append(f"missing numbers {shown}{more}; last served at each exit "
                         f"{run.exits_last_served}")  # fmt: skip
    row.rss_mib = run.rss_kib / 1024
    if books.invented:
        row.notes.append(f"{books.invented} numbers stored that were never served")
    if run.died:
        row.notes.append(f"agent exited by itself, exit codes {run.died}")
    if any(code != 0 for code in run.return_codes):
        row.notes.append(f"SIGTERM exit codes {run.return_codes}")
    if tracebacks := run.log.read_text(errors="replace").count("Traceback"):
        row.notes.append(f"{tracebacks} tracebacks in the agent's log")
    if row.caught_up_s is None:
        row.notes.append(f"the spool's backlog not delivered within {RESUME_TIMEOUT_S:.0f} s")
    if row.resume_s is None:
        row.notes.append(f"no new sample stored within {RESUME_TIMEOUT_S:.0f} s of the fault's end")


async def device_outage(run: Run, seconds: float, kill: bool) -> tuple[int, int]:
    plc = run.plc
    return await outage(run, plc.stop, lambda: plc.start(plc.host, plc.port), seconds, kill)


async def broker_outage(run: Run, seconds: float, kill: bool) -> tuple[int, int]:
    assert run.broker is not None
    return await outage(run, run.broker.stop, run.broker.start, seconds, kill)


def faults(outages: list[float], kills: list[bool]) -> list[Fault]:
    matrix: list[Fault] = []
    for kill in kills:
        tail = " +kill" if kill else ""
        matrix += [
            Fault("disk", f"disk full 10 s, freed{tail}", partial(disk_full, kill=kill)),
            Fault("bitrot", f"bit rot in a spooled batch{tail}", partial(bit_rot, kill=kill)),
            Fault("torn", f"spool.sqlite cut to half{tail}", partial(torn_spool, kill=kill)),
            Fault(
                "frame", f"64 B garbage in a frame segment{tail}", partial(frame_garbage, kill=kill)
            ),
        ]
        for seconds in outages:
            matrix += [
                Fault("device", f"device outage {seconds:.0f} s{tail}",
                      partial(device_outage, seconds=seconds, kill=kill)),
                Fault("broker", f"broker outage {seconds:.0f} s{tail}",
                      partial(broker_outage, seconds=seconds, kill=kill)),
            ]  # fmt: skip
    return sorted(matrix, key=lambda f: FAMILIES.index(f.family))


def lost_text(lost: dict[str, int]) -> str:
    if not lost:
        return "0"
    reasons = ", ".join(f"{reason} {points}" for reason, points in sorted(lost.items()))
    return f"{sum(lost.values())} ({reasons})"


HEADER = (
    "fault", "acquired", "stored", "lost (counted)", "in flight", "size unknown",
    "unaccounted", "dup", "resume s", "caught up s", "RSS MiB",
)  # fmt: skip


def table_line(cells: tuple[str, ...] | list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def row_cells(row: Row) -> list[str]:
    resume, caught_up = (
        "-" if seconds is None else f"{seconds:.2f}" for seconds in (row.resume_s, row.caught_up_s)
    )
    return [
        row.fault, str(row.acquired), str(row.stored), lost_text(row.lost), str(row.in_flight),
        str(row.size_unknown), str(row.unaccounted), str(row.duplicates), resume,
        caught_up, f"{row.rss_mib:.0f}",
    ]  # fmt: skip


async def run_matrix(matrix: list[Fault], keep: bool) -> list[Row]:
    rows = []
    for seed, fault in enumerate(matrix, start=20):
        started = time.monotonic()
        directory = Path(mkdtemp(prefix="bench-faults-"))
        try:
            row = await run_row(fault, directory, seed)
        except Skip as skipped:
            row = Row(fault.title, notes=[f"skipped: {skipped}"])
        except TimeoutError as stuck:  # the agent never got as far as the fault needs
            row = Row(fault.title, complete=False, notes=[f"did not complete: {stuck}"])
        if keep:
            row.notes.append(f"kept in {directory}")
        else:
            shutil.rmtree(directory)
        rows.append(row)
        print(f"{fault.title}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated of {','.join(FAMILIES)}")
    parser.add_argument("--short", action="store_true", help="10 s outages only (not 60 s)")
    parser.add_argument("--no-kill", action="store_true", help="without the +kill variants")
    parser.add_argument("--keep", action="store_true", help="keep each row's folder (logs)")
    args = parser.parse_args()
    only = [name for name in args.only.split(",") if name]
    if unknown := set(only) - set(FAMILIES):
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {','.join(FAMILIES)}")
    matrix = faults(
        [10.0] if args.short else [10.0, 60.0], [False] if args.no_kill else [False, True]
    )
    matrix = [fault for fault in matrix if not only or fault.family in only]
    started = time.monotonic()
    configure("warning")  # the collector's, in this process; the agent logs to a file
    rows = asyncio.run(run_matrix(matrix, args.keep))
    print(table_line(HEADER))
    print(table_line(["---"] * len(HEADER)))
    for row in rows:
        print(table_line(row_cells(row)))
    for row in rows:
        for note in row.notes:
            print(f"- {row.fault}: {note}")
    print(f"({time.monotonic() - started:.0f} s)")
    bad = [r for r in rows if r.unaccounted or r.duplicates or not r.complete]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
