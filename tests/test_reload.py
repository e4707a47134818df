"""Reloading the config of a running agent (issue 15): only what changed restarts.

Every test runs a real agent on the Modbus simulator's sequence register (each read is
served a fresh number, tests/faults/harness.py), so the books balance sample by sample:
each number served is stored exactly once, across a reload, or the test says which was
not. The agent reads its config from a file, as ``edge-agent run`` does, and the test
rewrites that file between reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
import structlog

from agent.acquisition.supervisor import SourceRunner
from agent.config.load import load_config
from agent.runtime import Agent
from agent.store.lineage import record_path
from simulators.modbus_plc import POINTS, SEQUENCE_AREA, ModbusPLCSimulator
from tests.faults.harness import stored_numbers
from tests.faults.outages import wait_for

pytestmark = pytest.mark.slow

S = 1_000_000_000
LATENESS = 200_000_000  # batch.lateness of agent_file: a window closes this after its end
SPINDLE, TORQUE = POINTS[0], POINTS[2]  # one block: the same poll, the same time


def seq_source(name: str, port: int, tags: str = "", snap: bool = False) -> str:
    """A source reading the sequence register every 100 ms (and ``tags``)."""
    return (
        f'[[sources]]\nname = "{name}"\nprotocol = "modbus"\n'
        f'url = "modbus+tcp://127.0.0.1:{port}"\ntimeout = "300ms"\n'
        f'backoff_initial = "100ms"\nbackoff_max = "500ms"\n{"snap = true" if snap else ""}\n'
        f'[[sources.tags]]\nname = "seq"\naddress = "hr:{SEQUENCE_AREA}"\ntype = "uint32"\n'
        f'rate = "100ms"\n{tags}\n'
    )


def agent_file(tmp_path: Path, sources: str, store: Path | None = None, extra: str = "") -> Path:
    """Write (or rewrite) the agent's config file; returns its path."""
    store = store or tmp_path / "store"
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\ngateway_id = "gw"\nmetrics = ""\ndata_dir = "{tmp_path / "state"}"\n'
        'log_format = "json"\n'
        f'[batch]\nwindow = "500ms"\nlateness = "200ms"\n{extra}\n'
        '[spool]\ndrain_timeout = "3s"\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{store}"\n'
        'backoff_initial = "100ms"\nbackoff_max = "300ms"\n\n' + sources
    )
    return path


@asynccontextmanager
async def agent_on(config: Path) -> AsyncIterator[Agent]:
    """An agent running on a config file in this loop; stopped (flushing) at the end."""
    agent = Agent(load_config(config))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def runner_of(agent: Agent, name: str) -> SourceRunner:
    return next(runner for runner in agent.runners if runner.config.name == name)


def numbers_of(store: Path, source: str) -> np.ndarray:
    """The good ``seq`` samples one source stored, as integers (duplicates kept)."""
    rows = rows_of(store, source)
    rows = rows.filter(pc.equal(rows["tag"].cast(pa.string()), "seq"))
    good = rows.filter(pc.equal(rows["quality"], 0))
    return good["value"].to_numpy().astype(np.int64)


async def more_polls(runner: SourceRunner, samples: int) -> None:
    """Wait for ``samples`` more (a new runner counts on from the one it replaced)."""
    polled = runner.points
    await wait_for(lambda: runner.points > polled + samples, 10.0, "new polls")


def assert_each_number_once(
    served: list[int],
    stores: list[Path],
    in_flight: int,
    source: str | None = None,
    also: frozenset[int] = frozenset(),
) -> None:
    """Every number the simulator served is stored exactly once in ``stores`` together
    (by ``source`` only, if given), none is invented, and only the last ``in_flight``
    served (the polls in flight when the agent stopped) and ``also`` may be missing."""
    numbers = np.concatenate(
        [stored_numbers(s) if source is None else numbers_of(s, source) for s in stores]
    )
    unique, counts = np.unique(numbers, return_counts=True)
    assert (counts == 1).all(), f"stored twice: {unique[counts > 1].tolist()}"
    assert not set(unique.tolist()) - set(served), "a number nobody served"
    missing = sorted(set(served) - set(unique.tolist()))
    allowed = set(served[-in_flight:]) | also
    assert set(missing) <= allowed, f"lost: {missing} of {len(served)} served"


def rows_of(store: Path, source: str) -> pa.Table:
    table = ds.dataset(store, format="parquet", partitioning="hive").to_table()
    return table.filter(pc.equal(table["source"].cast(pa.string()), source))


def times_of(table: pa.Table, tag: str) -> np.ndarray:
    rows = table.filter(pc.equal(table["tag"].cast(pa.string()), tag))
    return rows["time"].cast(pa.int64()).to_numpy()


def footers(store: Path) -> list[dict[bytes, bytes]]:
    return [
        dict(fragment.physical_schema.metadata)
        for fragment in ds.dataset(store, format="parquet", partitioning="hive").get_fragments()
    ]


async def test_a_changed_tag_list_is_polled_at_once_and_the_other_source_never_stops(
    tmp_path: Path,
) -> None:
    # a slow device (20 ms an answer), reloaded while a poll of it is in flight: a reload
    # that cancelled that poll would lose the number it was served
    async with (
        ModbusPLCSimulator(seed=11, response_delay_s=0.02) as slow,
        ModbusPLCSimulator(seed=12) as other,
    ):
        steady = seq_source("steady", other.port, snap=True)
        spindle = SPINDLE.toml("100ms")
        without = steady + seq_source("plc", slow.port, spindle)
        with_torque = steady + seq_source("plc", slow.port, f"{spindle}\n{TORQUE.toml('100ms')}")
        config = agent_file(tmp_path, without)
        reloads: list[tuple[int, int]] = []  # (asked, applied) ns
        async with agent_on(config) as agent:
            kept = runner_of(agent, "steady")
            await wait_for(lambda: runner_of(agent, "plc").points > 40, 10.0, "first polls")
            hashes = [agent.loaded.config_hash]
            for text in (with_torque, without, with_torque):
                agent_file(tmp_path, text)
                await wait_for(lambda: slow.answering, 5.0, "a poll in flight")
                asked_ns = time.time_ns()
                result = await agent.reload()
                reloads.append((asked_ns, time.time_ns()))
                assert result.outcome == "applied", result
                assert result.changes == {"sources_restarted": ["plc"]}
                assert runner_of(agent, "steady") is kept, "the unchanged source was not restarted"
                hashes.append(result.config_hash)
                await more_polls(runner_of(agent, "plc"), 40)
            served_slow, served_other = list(slow.served_sequence), list(other.served_sequence)
            overruns = agent.metrics.overruns.labels("steady", "100ms")._value.get()
    store = tmp_path / "store"
    assert_each_number_once(served_slow, [store], in_flight=1, source="plc")
    assert_each_number_once(served_other, [store], in_flight=1, source="steady")

    plc_rows = rows_of(store, "plc")
    torque, spindle_times = times_of(plc_rows, "torque"), times_of(plc_rows, "spindle_speed")
    (added, added_ns), (removed, removed_ns), (again, again_ns) = reloads
    assert torque.size > 10
    assert torque.min() > added, "the new tag is read only after the reload"
    assert not ((torque > removed_ns) & (torque < again)).any(), "nor once it was taken out"
    for applied_ns, until in ((added_ns, removed), (again_ns, np.iinfo(np.int64).max)):
        after = spindle_times[(spindle_times > applied_ns) & (spindle_times < until)]
        assert np.isin(after, torque).all(), "every poll after the reload reads the new tag"

    steady_times = np.unique(times_of(rows_of(store, "steady"), "seq"))
    ticks = np.diff(steady_times) // (S // 10)
    assert (steady_times % (S // 10) == 0).all(), "snapped onto the 100 ms ticks"
    assert int((ticks - 1).sum()) == overruns, "no tick missed but those counted as overruns"
    assert steady_times.min() < added < again_ns < steady_times.max()

    assert hashes[0] == hashes[2] != hashes[1] == hashes[3]
    for metadata in footers(store):
        start = int(metadata[b"edge_agent.window_start_ns"])
        end = int(metadata[b"edge_agent.window_end_ns"])
        config_hash = metadata[b"edge_agent.config_hash"].decode()
        if end + LATENESS + S <= added:  # closed (long) before the first reload
            assert config_hash == hashes[0]
            digest = metadata[b"edge_agent.lineage"].decode()
            assert "plc/torque" not in json.loads((store / record_path(digest)).read_text())
        if start > again_ns + S:  # opened after the last reload: its config and lineage
            assert config_hash == hashes[3]


async def test_a_broken_or_restart_only_config_is_refused_and_the_running_one_goes_on(
    tmp_path: Path,
) -> None:
    async with ModbusPLCSimulator(seed=12) as plc:
        source = seq_source("plc", plc.port)
        config = agent_file(tmp_path, source)
        with structlog.testing.capture_logs() as logs:
            async with agent_on(config) as agent:
                runner = agent.runners[0]
                await wait_for(lambda: runner.points > 10, 10.0, "first polls")
                good_hash = agent.loaded.config_hash
                config.write_text(config.read_text().replace('rate = "100ms"', "rate = 100"))
                broken = await agent.reload()
                agent_file(tmp_path, source)
                config.write_text(config.read_text().replace('window = "500ms"', 'window = "1s"'))
                restart_only = await agent.reload()
                agent_file(tmp_path, source)
                unchanged = await agent.reload()
                polled = runner.points
                await wait_for(lambda: runner.points > polled + 10, 10.0, "polls go on")
                assert agent.runners == [runner], "the source was never restarted"
                assert agent.loaded.config_hash == good_hash
            served = list(plc.served_sequence)
    assert broken.outcome == "invalid"
    assert "sources[0].tags[0].rate" in broken.message
    assert restart_only.outcome == "refused"
    assert "batch.window: 500ms -> 1s" in restart_only.message
    assert unchanged.outcome == "unchanged"
    refusals = [e for e in logs if e["event"].startswith("reload refused")]
    assert len(refusals) == 2, refusals
    assert "sources[0].tags[0].rate" in refusals[0]["problems"]
    assert refusals[1]["keys"] == ["batch.window: 500ms -> 1s"]
    assert_each_number_once(served, [tmp_path / "store"], in_flight=1)


async def test_a_changed_uplink_takes_over_the_spooled_batches(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"not a folder: every write of this uplink fails")
    async with ModbusPLCSimulator(seed=13) as plc:
        source = seq_source("plc", plc.port)
        config = agent_file(tmp_path, source, store=first)
        async with agent_on(config) as agent:
            await wait_for(lambda: agent.spool.size()[0] >= 4, 10.0, "batches held in the spool")
            assert agent.batches_written == 0
            spooled = agent.spool.size()[0]
            agent_file(tmp_path, source, store=second)
            reload_ns = time.time_ns()
            result = await agent.reload()
            assert result.outcome == "applied", result
            assert result.changes == {"uplinks_restarted": ["parquet"]}
            await wait_for(lambda: agent.spool.size()[0] == 0, 15.0, "the spool emptied")
            served = list(plc.served_sequence)
    assert spooled >= 4
    windows = [int(m[b"edge_agent.window_start_ns"]) for m in footers(second)]
    assert sum(start < reload_ns - S for start in windows) >= 3, "the backlog went to the new one"
    assert_each_number_once(served, [second], in_flight=1)


async def test_sighup_reloads_and_never_ends_the_process(tmp_path: Path) -> None:
    async with ModbusPLCSimulator(seed=14) as plc:
        source = seq_source("plc", plc.port)
        config = agent_file(tmp_path, source)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.commands.cli", "run", "-c", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            events = await _read_until(process, "source connected")
            process.send_signal(signal.SIGHUP)
            events += await _read_until(process, "reload: the config is unchanged")
            text = config.read_text()
            config.write_text(text.replace(source, seq_source("plc", plc.port, TORQUE.toml("1s"))))
            process.send_signal(signal.SIGHUP)
            events += await _read_until(process, "reload applied")
            events += await _read_until(process, "source connected")
            assert process.returncode is None, "SIGHUP did not end the agent"
            process.send_signal(signal.SIGTERM)
            events += await _read_until(process, "agent stopped")
            assert await asyncio.wait_for(process.wait(), 30) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    applied = next(e for e in events if e["event"] == "reload applied")
    assert applied["sources_restarted"] == ["plc"]
    connected = [e for e in events if e["event"] == "source connected"]
    assert [e["tags"] for e in connected] == [1, 2], "the source came back with its new tags"


async def _read_until(process: asyncio.subprocess.Process, event: str) -> list[dict[str, object]]:
    """The agent's JSON log lines up to the first with ``event``."""
    assert process.stderr is not None
    lines: list[dict[str, object]] = []
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), 20)
        assert line, f"the agent ended before logging {event!r}: {lines[-3:]}"
        if not line.startswith(b"{"):
            continue  # a library's own warning, not the agent's
        entry = json.loads(line)
        lines.append(entry)
        if entry["event"] == event:
            return lines


async def test_frames_logged_before_a_reload_are_replayed_as_their_tags_after_a_kill(
    tmp_path: Path,
) -> None:
    """The frame log numbers tags as the config of the moment did: a kill soon after a
    reload that reordered them leaves frames of both numberings to replay at the start."""
    async with ModbusPLCSimulator(seed=15) as plc:
        before = seq_source("plc", plc.port)  # seq is tag 0
        after = seq_source("plc", plc.port).replace(  # spindle_speed is tag 0, seq tag 1
            "[[sources.tags]]", f"{SPINDLE.toml('100ms')}\n\n[[sources.tags]]", 1
        )
        config = agent_file(tmp_path, before)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.commands.cli", "run", "-c", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await _read_until(process, "source connected")
            await asyncio.sleep(1.0)
            agent_file(tmp_path, after)
            process.send_signal(signal.SIGHUP)
            await _read_until(process, "reload applied")
            await asyncio.sleep(0.2)  # windows from before the reload are still open
            at_kill = len(plc.served_sequence)
            process.kill()
            await process.wait()
            in_flight = frozenset(plc.served_sequence[at_kill - 1 : len(plc.served_sequence)])
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        async with agent_on(config) as agent:
            await wait_for(lambda: agent.runners[0].points > 20, 10.0, "polls after the kill")
        served = list(plc.served_sequence)
    store = tmp_path / "store"
    assert_each_number_once(served, [store], in_flight=1, also=in_flight)  # at the kill, the stop
    spindle = rows_of(store, "plc").filter(
        pc.equal(rows_of(store, "plc")["tag"].cast(pa.string()), "spindle_speed")
    )
    assert spindle.num_rows > 10
    assert not np.isin(spindle["value"].to_numpy(), served).any(), "no number under another tag"


async def test_systemd_sees_the_reload_begin_and_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        async with ModbusPLCSimulator(seed=16) as plc:
            config = agent_file(tmp_path, seq_source("plc", plc.port))
            async with agent_on(config) as agent:
                await wait_for(lambda: agent.runners[0].points > 5, 10.0, "first polls")
                result = await agent.reload()
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(sock.recv(256).decode())
    assert result.outcome == "unchanged"
    reloading = next(i for i, m in enumerate(messages) if m.startswith("RELOADING=1\n"))
    assert messages[reloading].split("\n")[1].startswith("MONOTONIC_USEC=")
    assert messages[reloading + 1] == "READY=1", messages


async def test_the_wide_output_gains_the_new_tag_and_keeps_the_others(tmp_path: Path) -> None:
    wide = tmp_path / "wide"
    resample = f'[resample]\nperiod = "100ms"\nmax_gap = "1s"\npath = "{wide}"\n'
    async with ModbusPLCSimulator(seed=17) as plc:
        spindle = SPINDLE.toml("100ms")
        config = agent_file(tmp_path, seq_source("plc", plc.port, spindle) + resample)
        async with agent_on(config) as agent:
            await more_polls(agent.runners[0], 80)  # 4 s: a few wide windows out
            tags = f"{spindle}\n{TORQUE.toml('100ms')}"
            agent_file(tmp_path, seq_source("plc", plc.port, tags) + resample)
            result = await agent.reload()
            reloaded_ns = time.time_ns()
            await more_polls(agent.runners[0], 60)
    assert result.outcome == "applied", result
    tables = [
        (int(f.physical_schema.metadata[b"edge_agent.window_start_ns"]), f.to_table())
        for f in ds.dataset(wide, format="parquet", partitioning="hive").get_fragments()
    ]
    # a window is resampled once the next one closed (lateness after its end)
    before = [table for start, table in tables if start + 2 * S < reloaded_ns]
    last = max(start for start, _ in tables)  # flushed at the stop: no right neighbours
    after = [table for start, table in tables if reloaded_ns + S < start < last]
    assert before, "wide batches from before the reload"
    assert after, "and after it"
    for table in before:
        assert "plc/torque" not in table.column_names
    for table in after:
        assert {"plc/seq", "plc/spindle_speed", "plc/torque"} <= set(table.column_names)
        assert table.num_rows == 5, "a 500 ms window on a 100 ms grid"
        assert table["plc/seq"].null_count == 0, "the kept tag interpolated throughout"
