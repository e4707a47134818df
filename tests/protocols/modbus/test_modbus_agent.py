"""Simulator + agent over real TCP (and RTU on a virtual serial line): decoded values,
timestamps, rates and outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import structlog

from agent.acquisition import quality as q
from agent.config.load import parse_config
from agent.runtime import Agent
from agent.store.lineage import file_lineage
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from simulators.serial_link import SerialLink
from tests.conftest import agent_toml, read_store, run_agent


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy()


def assert_decodes_to_the_truth(store: Path, simulator: ModbusPLCSimulator, agent: Agent) -> None:
    """Every point of the store is a value the simulator served within +-200 ms of its
    timestamp; a torque sample (fresh noise every scan) pins that scan within the RTT."""
    table = read_store(store)
    stats = agent.runners[0].ctx.all_poll_stats["100ms"]
    max_rtt_ns = int(stats.rtt_s.values().max() * 1e9)
    assert table.num_rows >= len(POINTS) * 20
    tags = table["tag"].cast("string").to_numpy(zero_copy_only=False)
    times = table["time"].cast("int64").to_numpy()
    values = _column(table, "value")
    quality = _column(table, "quality")
    assert (quality == q.GOOD).all(), "every sample of a healthy PLC is good"
    offsets = np.arange(-200, 201, dtype=np.int64) * simulator.signals.scan_ns
    for point in POINTS:
        mine = tags == point.name
        assert mine.sum() >= 20, point.name
        if point.type == "string":
            texts = table.filter(pc.equal(table["tag"].cast("string"), point.name))["text"]
            assert set(texts.to_pylist()) == {simulator.signals.program}
            continue
        # for each sample, the scan instants within +-200 ms whose truth equals the value
        candidates = times[mine][:, None] + offsets[None, :]
        truth = simulator.truth(point.name, candidates.ravel()).reshape(candidates.shape)
        matches = truth == values[mine][:, None]
        assert matches.any(axis=1).all(), f"{point.name}: a value matches no served truth"
        if point.signal == "torque":  # fresh noise every scan: a match pins the scan
            # the nearest matching scan: the same noise value can recur within +-200 ms
            distance = np.where(matches, np.abs(offsets)[None, :], np.iinfo(np.int64).max)
            error = distance.min(axis=1)
            assert error.max() <= max_rtt_ns + simulator.signals.scan_ns, (
                f"timestamp off by {error.max() / 1e6:.2f} ms, RTT max {max_rtt_ns / 1e6:.2f} ms"
            )


async def test_every_type_decodes_to_the_seeded_truth_with_tight_timestamps(
    tmp_path: Path,
) -> None:
    simulator = ModbusPLCSimulator(seed=11, scan_ns=1_000_000)  # 1 ms PLC scan
    await simulator.start("127.0.0.1", 0)
    try:
        agent = await run_agent(agent_toml(tmp_path, simulator.agent_config("100ms")), 3.0)
    finally:
        await simulator.stop()
    assert simulator.write_attempts == 0, "the agent only ever reads"
    assert_decodes_to_the_truth(tmp_path, simulator, agent)
    files = list(tmp_path.glob("gateway=test-gw/date=*/*.parquet"))
    # a window that began before the first poll answered is an empty batch: no tags in it
    with_rows = [f for f in files if pq.read_metadata(f).num_rows]
    assert with_rows
    lineage = json.loads(file_lineage(with_rows[0]) or "{}")
    for point in POINTS:
        assert lineage[f"plc1/{point.name}"].get("unit") == point.unit


async def test_rtu_on_a_serial_line_decodes_every_type_as_tcp_does(tmp_path: Path) -> None:
    """The same PLC served as Modbus RTU on one end of a virtual serial cable."""
    simulator = ModbusPLCSimulator(seed=11, scan_ns=1_000_000)
    async with SerialLink() as link:
        await simulator.start_serial(link.device_port, baudrate=115200, parity="N")
        try:
            source = simulator.agent_config(
                "100ms",
                url=f"modbus+rtu://{link.host_port}",
                extra='baudrate = 115200\nparity = "N"\n',
            )
            agent = await run_agent(agent_toml(tmp_path, source), 3.0)
        finally:
            await simulator.stop()
    assert_decodes_to_the_truth(tmp_path, simulator, agent)


async def test_line_noise_and_a_missing_serial_port_give_bad_samples_not_crashes(
    tmp_path: Path,
) -> None:
    """RTU's failure modes: a device answering garbage (failed CRCs: timeouts) on one line,
    and a serial port that does not exist (comm errors, reconnects) for another source;
    the agent keeps polling both and logs each failure once."""
    rng = np.random.default_rng(5)
    loop = asyncio.get_running_loop()
    extra = 'parity = "N"\ntimeout = "100ms"\nbackoff_initial = "100ms"\nbackoff_max = "200ms"\n'
    async with SerialLink() as link:
        device = os.open(link.device_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)

        def answer_garbage() -> None:
            with contextlib.suppress(BlockingIOError):
                os.read(device, 256)
                os.write(device, rng.integers(0, 256, 9, np.uint8).tobytes())

        loop.add_reader(device, answer_garbage)
        simulator = ModbusPLCSimulator(seed=1)  # only for its config blocks
        sources = simulator.agent_config(
            "100ms", points=POINTS[:1], url=f"modbus+rtu://{link.host_port}", extra=extra
        ) + simulator.agent_config(
            "100ms",
            source="plc2",
            points=POINTS[:1],
            url=f"modbus+rtu://{tmp_path / 'no-such-tty'}",
            extra=extra,
        )
        try:
            with structlog.testing.capture_logs() as logs:
                agent = await run_agent(agent_toml(tmp_path, sources), 2.5)
        finally:
            loop.remove_reader(device)
            os.close(device)
    table = read_store(tmp_path)
    source = table["source"].cast("string").to_numpy(zero_copy_only=False)
    reasons = table["quality"].to_numpy() & q.REASON_MASK
    noisy = source == "plc1"
    assert noisy.sum() >= 5, "the noisy line was polled on and on"
    assert (table["quality"].to_numpy()[noisy] >= q.BAD).all(), "no garbage became a value"
    assert (reasons[noisy] == q.Reason.TIMEOUT).all()
    assert agent.runners[1].failures >= 2, "the missing port is retried"
    assert agent.runners[0].points >= 5
    loud = [e for e in logs if e.get("source") == "plc2" and e["log_level"] != "debug"]
    assert len(loud) == 1, "the missing port is logged once, not per retry"
    assert "no-such-tty" in loud[0]["error"], "the log names the port"


@pytest.mark.slow
async def test_a_100ms_tag_yields_ten_samples_per_second(
    modbus_plc: ModbusPLCSimulator, tmp_path: Path
) -> None:
    text = agent_toml(tmp_path, modbus_plc.agent_config("100ms"))
    text = text.replace('metrics = ""', 'metrics = "127.0.0.1:0"')
    stop = asyncio.Event()
    agent = Agent(parse_config(tomllib.loads(text), Path("test.toml")))
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(10.6)
    scraped = await http_get(agent.status_port, "/metrics")
    health = await http_get(agent.status_port, "/healthz")
    stop.set()
    await task
    table = read_store(tmp_path)
    speed = table.filter(pc.equal(table["tag"].cast("string"), "spindle_speed"))
    seconds = speed["time"].cast("int64").to_numpy() // 1_000_000_000
    full = np.arange(seconds.min() + 1, seconds.max())  # whole seconds inside the run
    assert len(full) >= 9
    per_second = np.array([(seconds == s).sum() for s in full])
    assert ((per_second >= 9) & (per_second <= 11)).all(), per_second
    stats = agent.runners[0].ctx.all_poll_stats["100ms"]
    assert stats.lateness_s.percentile(99) < 0.05
    assert stats.overruns == 0
    assert 'edge_agent_poll_overruns_total{group="100ms",source="plc1"} 0.0' in scraped
    assert "edge_agent_poll_lateness_seconds_bucket" in scraped
    assert health.startswith("HTTP/1.1 200")
    assert json.loads(health.split("\r\n\r\n", 1)[1])["sources"] == {"plc1": True}


async def http_get(port: int | None, path: str) -> str:
    assert port is not None, "the status endpoint is running"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    response = (await reader.read()).decode()
    writer.close()
    return response


def _samples(table: pa.Table, source: str) -> pa.Table:
    return table.filter(pc.equal(table["source"].cast("string"), source))


async def test_a_plc_that_dies_and_returns_affects_only_its_own_source(tmp_path: Path) -> None:
    dying = ModbusPLCSimulator(seed=1)
    steady = ModbusPLCSimulator(seed=2)
    port = await dying.start("127.0.0.1", 0)
    await steady.start("127.0.0.1", 0)
    backoff = 'backoff_initial = "200ms"\nbackoff_max = "400ms"\ntimeout = "200ms"\n'
    points = POINTS[:4]
    sources = dying.agent_config("100ms", source="dying", points=points, extra=backoff)
    sources += steady.agent_config("100ms", source="steady", points=points, extra=backoff)
    stop = asyncio.Event()
    agent = Agent(parse_config(tomllib.loads(agent_toml(tmp_path, sources)), Path("t.toml")))
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(1.5)
        killed_at = time.time_ns()
        await dying.stop()
        await asyncio.sleep(2.0)
        revived_at = time.time_ns()
        await dying.start("127.0.0.1", port)
        await asyncio.sleep(2.0)
        stop.set()
        await task
    await steady.stop()
    await dying.stop()

    table = read_store(tmp_path)
    lost = _samples(table, "dying")
    times = lost["time"].cast("int64").to_numpy()
    quality = lost["quality"].to_numpy()
    bad = quality >= q.BAD
    assert bad.any(), "the outage is visible as bad-quality samples"
    assert ((quality[bad] & q.REASON_MASK) == q.Reason.COMM_ERROR).any()
    good_times = times[~bad]
    assert not ((good_times > killed_at + 100_000_000) & (good_times < revived_at)).any()
    resumed = good_times[good_times > revived_at]
    assert resumed.size >= 10, "delivery resumes after the PLC returns"
    assert resumed.min() - revived_at < 1_500_000_000, "within the backoff (<= 400 ms) + slack"

    kept = _samples(table, "steady")
    kept_times = np.unique(kept["time"].cast("int64").to_numpy())
    assert (kept["quality"].to_numpy() == q.GOOD).all()
    assert np.diff(kept_times).max() < 300_000_000, "the other source never paused"

    dying_logs = [entry for entry in logs if entry.get("source") == "dying"]
    failures = [e for e in dying_logs if e["event"] == "source failed"]
    recovered = [e for e in dying_logs if e["event"] == "recovered" and e["problem"] == "session"]
    assert len(failures) == 1, failures
    assert len(recovered) == 1, recovered
    assert not [e for e in logs if e.get("source") == "steady" and e["log_level"] == "warning"]


async def test_exceptions_and_timeouts_become_bad_samples_not_crashes(tmp_path: Path) -> None:
    simulator = ModbusPLCSimulator(seed=3, timeout_rate=0.2, timeout_s=0.5)
    await simulator.start("127.0.0.1", 0)
    unmapped = '\n[[sources.tags]]\nname = "unmapped"\naddress = "hr:300"\nrate = "100ms"\n'
    extra = 'timeout = "150ms"\nbackoff_initial = "100ms"\n'
    sources = simulator.agent_config("100ms", points=POINTS[:2], extra=extra) + unmapped
    with structlog.testing.capture_logs() as logs:
        await run_agent(agent_toml(tmp_path, sources), 3.0)
    await simulator.stop()

    table = read_store(tmp_path)
    tags = table["tag"].cast("string").to_numpy(zero_copy_only=False)
    quality = table["quality"].to_numpy()
    reasons = quality & q.REASON_MASK
    unmapped_q = quality[tags == "unmapped"]
    assert unmapped_q.size >= 10
    assert (unmapped_q == q.make(q.BAD, q.Reason.DEVICE_EXCEPTION)).all()
    assert np.isnan(table["value"].to_numpy()[tags == "unmapped"]).all()
    speed = tags == "spindle_speed"
    assert (reasons[speed] == q.Reason.TIMEOUT).any(), "injected timeouts are flagged"
    assert (quality[speed] == q.GOOD).sum() >= 5, "good reads continue between timeouts"
    exception_logs = [e for e in logs if "device exception" in e["event"]]
    assert len(exception_logs) == 1, "a persistent exception is logged once, not per poll"


async def test_dropped_connections_are_reconnected_and_nothing_is_written(tmp_path: Path) -> None:
    simulator = ModbusPLCSimulator(seed=4, disconnect_every_s=0.7)
    await simulator.start("127.0.0.1", 0)
    extra = 'timeout = "200ms"\nbackoff_initial = "50ms"\nbackoff_max = "100ms"\n'
    agent = await run_agent(
        agent_toml(tmp_path, simulator.agent_config("100ms", points=POINTS[:2], extra=extra)),
        3.0,
    )
    await simulator.stop()
    assert agent.runners[0].failures >= 2, "the simulator dropped the connection repeatedly"
    table = read_store(tmp_path)
    good = table["quality"].to_numpy() == q.GOOD
    times = table["time"].cast("int64").to_numpy()[good]
    assert times.max() - times.min() > 2_500_000_000, "data kept flowing to the end"
    # ~28 ticks of 2 points; each of the ~4 drops costs at most the 200 ms timeout (a drop
    # that hits a request in flight) plus backoff, so at least half the ticks stay good.
    assert good.sum() >= 2 * 15
    assert simulator.write_attempts == 0, "the agent only ever reads"
