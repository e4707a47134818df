"""OPC UA simulator + agent over real TCP: both modes, arrays, restarts, security, browse."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import structlog

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.config.load import parse_config
from agent.runtime import Agent
from protocols.opcua.driver import OpcUaDriver
from protocols.sdk import DriverContext
from simulators.opcua_cnc import NODES, Node, OpcUaCncSimulator
from tests.conftest import agent_toml, read_store, run_agent

SCALARS = tuple(node for node in NODES if node.type != "String" and node.name != "vibration")
VIBRATION = next(node for node in NODES if node.name == "vibration")
MOVING = tuple(node for node in NODES if node.name == "axis_x")  # changes on every update


def _tag(table: pa.Table, name: str) -> pa.Table:
    return table.filter(pc.equal(table["tag"].cast(pa.string()), name))


def assert_matches_truth(
    simulator: OpcUaCncSimulator, table: pa.Table, nodes: tuple[Node, ...] = SCALARS
) -> None:
    """Every good scalar sample equals what the simulator published at that source time."""
    for node in nodes:
        rows = _tag(table, node.name)
        good = rows["quality"].to_numpy() == q.GOOD
        # subscriptions report by exception: a status word that did not change sends nothing
        assert good.sum() >= 1, f"{node.name}: no sample"
        source_ns = rows["time"].cast(pa.int64()).to_numpy()[good]
        truth = simulator.truth(node.name, simulator.true_time(source_ns))
        np.testing.assert_array_equal(rows["value"].to_numpy()[good], truth, err_msg=node.name)


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_every_node_arrives_with_source_timestamps_and_seeded_values(
    tmp_path: Path, mode: str
) -> None:
    # the server refuses reads of more than 4 nodes: poll mode must split its Read calls
    simulator = OpcUaCncSimulator(seed=5, update_ns=100_000_000, max_nodes_per_read=4)
    await simulator.start("127.0.0.1", 0)
    extra = f'mode = "{mode}"\n'
    try:
        agent = await run_agent(
            agent_toml(tmp_path, simulator.agent_config("100ms", extra=extra)), 3.0
        )
    finally:
        await simulator.stop()
    table = read_store(tmp_path)
    assert agent.runners[0].failures == 0
    assert_matches_truth(simulator, table)
    # SourceTimestamps are the simulator's 100 ms ticks, not receive times; axis_x moves on
    # every tick, so it arrives at the full rate
    speed = _tag(table, "spindle_speed")["time"].cast(pa.int64()).to_numpy()
    assert _tag(table, "axis_x").num_rows >= 25
    assert (speed % 100_000_000 == 0).all()
    # server time and receive time are kept beside the chosen (source) time
    scalars = _tag(table, "axis_x")
    chosen = scalars["time"].cast(pa.int64()).to_numpy()
    server = scalars["server_time"].cast(pa.int64()).to_numpy()
    received = scalars["received_time"].cast(pa.int64()).to_numpy()
    assert scalars["source_time"].cast(pa.int64()).to_numpy().tolist() == chosen.tolist()
    assert (server >= chosen).all()
    assert (received >= chosen).all()
    assert (received - chosen < 2_000_000_000).all()
    # the waveform arrives as blocks: every element is a sample of the vibration tag
    wave = _tag(table, VIBRATION.name)
    wave_times = wave["time"].cast(pa.int64()).to_numpy()
    starts = np.unique(wave_times // 100_000_000 * 100_000_000)
    assert len(wave_times) >= 5 * simulator.vibration_samples
    first = starts[1]
    block = wave.filter(
        pc.and_(
            pc.greater_equal(wave["time"].cast(pa.int64()), first),
            pc.less(wave["time"].cast(pa.int64()), first + 100_000_000),
        )
    )
    assert block.num_rows == simulator.vibration_samples
    np.testing.assert_array_equal(
        block["value"].to_numpy(),
        simulator.truth_block(int(simulator.true_time(np.array([first]))[0])),
    )
    text = _tag(table, "program")["text"].to_pylist()
    assert text
    assert all(isinstance(t, str) and t for t in text)


async def test_a_restarted_server_gets_its_subscription_back(tmp_path: Path) -> None:
    simulator = OpcUaCncSimulator(seed=6, update_ns=100_000_000)
    await simulator.start("127.0.0.1", 0)
    backoff_s = 0.5
    extra = (
        f'backoff_initial = "{int(backoff_s * 1000)}ms"\nbackoff_max = "1s"\nwatchdog = "500ms"\n'
    )
    config = agent_toml(tmp_path, simulator.agent_config("100ms", nodes=SCALARS, extra=extra))
    stop = asyncio.Event()
    agent = Agent(parse_config(tomllib.loads(config), Path("t.toml")))
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(2.0)
    await simulator.restart()
    restarted_at = time.time_ns()
    await asyncio.sleep(4.0)
    stop.set()
    await task
    await simulator.stop()

    table = read_store(tmp_path)
    assert agent.runners[0].failures >= 1, "the restart was noticed"
    moving = _tag(table, "axis_x")  # changes on every tick, so every tick is reported
    good = moving["quality"].to_numpy() == q.GOOD
    times = moving["time"].cast(pa.int64()).to_numpy()
    after = times[good & (times > restarted_at)]
    assert after.size >= 10, "delivery resumed with recreated subscriptions"
    # resumed within 2x the reconnect backoff of the moment the new server was up
    assert (after.min() - restarted_at) / 1e9 < 2 * backoff_s
    # the outage is marked in the data: one comm-error sample per tag, then nothing
    reasons = moving["quality"].to_numpy() & q.REASON_MASK
    assert (reasons == q.Reason.COMM_ERROR).sum() == 1
    # nothing duplicated (one sample per source timestamp), nothing invented (all match truth)
    assert len(np.unique(times[good])) == good.sum()
    assert_matches_truth(simulator, table)


@pytest.mark.parametrize(
    ("policy", "mode"),
    [
        ("Basic256Sha256", "SignAndEncrypt"),
        ("Basic256Sha256", "Sign"),
        ("Aes128Sha256RsaOaep", "SignAndEncrypt"),
        ("Aes256Sha256RsaPss", "SignAndEncrypt"),
    ],
)
async def test_secure_session_with_user_and_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, mode: str
) -> None:
    simulator = OpcUaCncSimulator(
        seed=8, security=True, cert_dir=tmp_path / "server-pki", users={"operator": "s3cret"}
    )
    await simulator.start("127.0.0.1", 0)
    monkeypatch.setenv("OPCUA_PASSWORD", "s3cret")
    extra = (
        f'security_policy = "{policy}"\nsecurity_mode = "{mode}"\n'
        f'server_certificate = "{simulator.server_certificate_path}"\n'
        'username = "operator"\npassword_env = "OPCUA_PASSWORD"\n'
    )
    text = agent_toml(
        tmp_path / "store",
        simulator.agent_config("100ms", nodes=SCALARS[:3], extra=extra),
        state=tmp_path / "state",
    )
    try:
        agent = await run_agent(text, 3.0)
    finally:
        await simulator.stop()
    assert agent.runners[0].failures == 0
    assert_matches_truth(simulator, read_store(tmp_path / "store"), SCALARS[:3])
    assert (tmp_path / "state" / "pki" / "own" / "cert.der").exists(), "client cert generated"


async def test_wrong_password_and_untrusted_server_fail_clearly_and_keep_retrying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = OpcUaCncSimulator(
        seed=9, security=True, cert_dir=tmp_path / "server-pki", users={"operator": "s3cret"}
    )
    await simulator.start("127.0.0.1", 0)
    monkeypatch.setenv("WRONG_PASSWORD", "guess")
    monkeypatch.setenv("RIGHT_PASSWORD", "s3cret")
    state = tmp_path / "state"
    common = (
        'security_policy = "Basic256Sha256"\nsecurity_mode = "SignAndEncrypt"\n'
        'username = "operator"\nbackoff_initial = "200ms"\nbackoff_max = "400ms"\n'
    )
    pinned = f'server_certificate = "{simulator.server_certificate_path}"\n'
    wrong = simulator.agent_config(
        "100ms",
        source="wrongpw",
        nodes=SCALARS[:1],
        extra=common + 'password_env = "WRONG_PASSWORD"\n' + pinned,
    )
    untrusted = simulator.agent_config(
        "100ms",
        source="untrusted",
        nodes=MOVING,
        extra=common + 'password_env = "RIGHT_PASSWORD"\n',
    )
    text = agent_toml(tmp_path / "store", wrong + untrusted, state=state)
    stop = asyncio.Event()
    agent = Agent(parse_config(tomllib.loads(text), Path("t.toml")))
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(2.0)
        # trust the server the way plant IT would: move the refused certificate over
        rejected = list((state / "pki" / "rejected").glob("*.der"))
        assert len(rejected) == 1
        (state / "pki" / "trusted").mkdir(parents=True, exist_ok=True)
        shutil.move(rejected[0], state / "pki" / "trusted" / rejected[0].name)
        untrusted_runner = agent.runners[1]
        for _ in range(100):  # the next retry (<= 400 ms) gets through; allow for a slow CI
            await asyncio.sleep(0.1)
            if untrusted_runner.points >= 10:
                break
        stop.set()
        await task
    await simulator.stop()
    assert agent.runners[0].failures >= 3, "a wrong password is retried with backoff"
    failed = [e for e in logs if e["event"] == "source failed"]
    by_source = {e["source"]: e["error"] for e in failed}
    assert "refused the user 'operator'" in by_source["wrongpw"]
    assert "not trusted" in by_source["untrusted"]
    assert "move" in by_source["untrusted"]
    assert len(failed) == 2, "each problem logged once"
    recovered = [e for e in logs if e["event"] == "recovered" and e.get("source") == "untrusted"]
    assert recovered, "trusting the certificate lets the next retry through"
    table = read_store(tmp_path / "store")
    untrusted_rows = table.filter(pc.equal(table["source"].cast(pa.string()), "untrusted"))
    assert (untrusted_rows["quality"].to_numpy() == q.GOOD).sum() >= 5


async def test_browse_output_pasted_into_a_config_checks_and_runs(tmp_path: Path) -> None:
    simulator = OpcUaCncSimulator(seed=2, update_ns=100_000_000)
    await simulator.start("127.0.0.1", 0)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.commands.cli",
            "browse",
            simulator.url,
            "--rate",
            "200ms",
            "--name",
            "cnc1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()
        browsed = stdout.decode()
        for node in NODES:
            assert f'node = "{node.node_id}"' in browsed, node.node_id
        assert f'[[sources]]\nname = "cnc1"\nprotocol = "opcua"\nurl = "{simulator.url}"' in browsed
        config_path = tmp_path / "browsed.toml"  # pasted as printed: the source header too
        config_path.write_text(agent_toml(tmp_path / "store", browsed))
        check = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.commands.cli",
            "check",
            "-c",
            str(config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await check.communicate()
        assert check.returncode == 0, err.decode()
        assert f"{len(NODES)} tags" in out.decode()
        await run_agent(config_path.read_text(), 2.0)
    finally:
        await simulator.stop()
    for node in NODES:
        if node.unit:
            assert f'unit = "{node.unit}"' in browsed, f"{node.name}: EngineeringUnits browsed"
    table = read_store(tmp_path / "store")
    names = np.unique(table["tag"].cast(pa.string()).to_numpy(zero_copy_only=False))
    assert len(names) == len(NODES), "every browsed tag delivered data"


async def test_server_deadband_thins_notifications_at_the_server(tmp_path: Path) -> None:
    simulator = OpcUaCncSimulator(seed=3, update_ns=100_000_000)
    await simulator.start("127.0.0.1", 0)
    plain = simulator.agent_config("100ms", source="plain", nodes=MOVING)
    filtered = simulator.agent_config("100ms", source="filtered", nodes=MOVING).replace(
        'unit = "mm"', 'unit = "mm"\nserver_deadband = 40.0'
    )
    try:
        await run_agent(agent_toml(tmp_path, plain + filtered), 3.0)
    finally:
        await simulator.stop()
    table = read_store(tmp_path)
    counts = {
        source: table.filter(pc.equal(table["source"].cast(pa.string()), source)).num_rows
        for source in ("plain", "filtered")
    }
    assert counts["plain"] >= 20
    assert 1 <= counts["filtered"] < counts["plain"] / 3, counts
    values = _tag(table.filter(pc.equal(table["source"].cast(pa.string()), "filtered")), "axis_x")
    assert (np.abs(np.diff(values["value"].to_numpy())) > 40.0).all(), "only moves beyond 40 mm"


class _UnsplitDriver(OpcUaDriver):
    """Ignores the server's MaxNodesPerRead, to provoke a refused Read."""

    async def _read_limits(self) -> None:
        self.max_nodes_per_read = 0


async def test_a_refused_read_gives_bad_samples_once_logged_and_the_session_lives_on() -> None:
    simulator = OpcUaCncSimulator(seed=4, update_ns=100_000_000, max_nodes_per_read=4)
    await simulator.start("127.0.0.1", 0)
    source = parse_config(
        tomllib.loads(simulator.agent_config("100ms", nodes=SCALARS, extra='mode = "poll"\n')),
        Path("t.toml"),
    ).config.sources[0]
    frames: list[Frame] = []

    async def collect(frame: Frame) -> None:
        frames.append(frame)

    context = DriverContext(source, collect)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(_UnsplitDriver(source).run(context))
        await asyncio.sleep(1.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await simulator.stop()
    assert not task.done() or task.cancelled(), "the session did not fail"
    assert len(frames) >= 10
    qualities = np.concatenate([frame.quality for frame in frames])
    assert (qualities == q.make(q.BAD, q.Reason.SOURCE_STATUS)).all()
    refused = [entry for entry in logs if entry["event"] == "read refused"]
    assert len(refused) == 1
    assert "BadTooManyOperations" in refused[0]["detail"]


async def test_a_refused_monitored_item_is_one_bad_sample_among_rate_groups(
    tmp_path: Path,
) -> None:
    # three rate groups, so three subscriptions: the refusal must land on the right tag
    simulator = OpcUaCncSimulator(seed=10)
    await simulator.start("127.0.0.1", 0)
    missing = Node("missing", "ns=2;s=CNC.NoSuchNode", "Double", "axis_x")
    sources = simulator.agent_config("100ms", nodes=MOVING)
    sources += "\n" + missing.toml("1s") + "\n\n" + NODES[0].toml("200ms") + "\n"
    source = parse_config(tomllib.loads(sources), Path("t.toml")).config.sources[0]
    frames: list[Frame] = []

    async def collect(frame: Frame) -> None:
        frames.append(frame)

    def count(tag: int) -> int:
        return sum(int((frame.tag == tag).sum()) for frame in frames)

    driver = OpcUaDriver(source)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(driver.run(DriverContext(source, collect, data_dir=tmp_path)))
        deadline = time.monotonic() + 30.0
        while count(0) < 10 or count(2) < 3:
            assert time.monotonic() < deadline, "no data"
            assert not task.done(), "the session failed"
            await asyncio.sleep(0.1)
        assert len(driver.subscriptions) == 3
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await simulator.stop()
    tags = np.concatenate([frame.tag for frame in frames])
    qualities = np.concatenate([frame.quality for frame in frames])
    assert (qualities[tags == 1] == q.make(q.BAD, q.Reason.SOURCE_STATUS)).tolist() == [True]
    assert (qualities[tags != 1] == q.GOOD).all()
    refused = [entry for entry in logs if entry["event"] == "monitored item refused"]
    assert [entry["node"] for entry in refused] == [missing.node_id]
    assert refused[0]["status"] == "BadNodeIdUnknown"
