"""The agent's footprint next to ThingsBoard IoT Gateway polling the same Modbus tags (issue 17).

Why: "cheaper per point than the gateway people already run" is a claim only a side-by-side
run can back. Both gateways run as subprocesses of this script, measured alike, against
the same Modbus simulator, the same float32 tags (hr:1000+2i) at the same rate, each with
durable storage: the agent (``edge-agent run -c <toml>``: spool, 1 s windows, Parquet
uplink) and the peer, ThingsBoard IoT Gateway (pinned ``PEER_VERSION``, installed from PyPI
into its own cached venv on first use) with its SQLite storage, sending telemetry to a
private MQTT broker as it would to a ThingsBoard server. A stand-in in this process answers
the peer's session-limits request as a server does (no rate limits) and counts what reaches
the broker.

The peer gets its most efficient configuration: one "wide-range" telemetry entry per
Modbus block (a registers-range read of the same blocks the agent reads,
``protocols.modbus.blocks.plan_blocks``), every value reported (``ON_RECEIVED``), 64 KiB
messages. (One entry per tag makes it read each tag on its own; the issue saw it pile up.)

Per run: ``--warmup`` seconds unmeasured, then ``--duration`` seconds over which the
process's CPU (utime + stime, children included, from /proc/<pid>/stat) and the
simulator's are counted; then ``--grace`` seconds more for what was due to arrive. A point
counts as delivered when its timestamp lies in the measured interval and it reached the
sink by the end of the grace: for the peer, values on ``v1/gateway/telemetry``; for the
agent, non-bad rows in its Parquet files. Due = tags x duration / rate; ``polls/s`` counts
the first tag's delivered points, i.e. the polls that came through. VmRSS is sampled
every 0.5 s from the start: steady = median of the last half of the samples, peak = max.
Rounds alternate agent and peer; the summary gives the per-round ratios peer/agent.

    python bench/bench_peers.py      # --tags 100,1000,10000 --repeat 3,3,1 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bench_modbus import BULK_BASE, cpu_seconds, simulator
from paho.mqtt.enums import CallbackAPIVersion
from processes import stop

from agent.acquisition.quality import BAD, SEVERITY_MASK
from agent.config.durations import parse_duration
from agent.config.load import parse_config
from protocols.modbus.blocks import plan_blocks
from protocols.modbus.config import ModbusSourceConfig
from simulators.mqtt_broker import private_broker

PEER = "thingsboard-gateway"
PEER_VERSION = "3.8.5"
# The peer's Modbus connector pip-installs its pinned pymodbus (and the serial packages)
# at start when missing; installed up front so no run pays for it.
PEER_PACKAGES = [f"{PEER}=={PEER_VERSION}", "pymodbus==3.9.2", "pyserial", "pyserial-asyncio"]
TELEMETRY_TOPIC = "v1/gateway/telemetry"
RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"
# What a ThingsBoard server without rate limits answers to getSessionLimits.
SESSION_LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {},
    "gatewayRateLimits": {},
}
GATEWAYS = ("agent", "peer")
FIRST_AGENT_TAG = "bulk0"  # at hr:1000 on both sides
FIRST_PEER_KEY = f"block0_{BULK_BASE}"
GOAL_DELIVERED = 0.999
GOAL_CPU_RATIO = 10.0


def peer_venv(cache: Path) -> Path:
    """The peer's venv under ``cache``, created and filled from PyPI on first use."""
    venv = cache / f"tb-gateway-{PEER_VERSION}"
    ready = venv / ".installed"
    if ready.exists():
        return venv
    print(f"installing {PEER} {PEER_VERSION} into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run([*pip, "-q", *PEER_PACKAGES], check=True)
    ready.write_text(" ".join(PEER_PACKAGES) + "\n")
    return venv


def agent_toml(sim_port: int, tags: int, rate: str, out: Path) -> str:
    """The agent's config: one Modbus source of N float32 tags, 1 s windows, Parquet uplink."""
    tag_tables = "".join(
        f'[[sources.tags]]\nname = "bulk{i}"\naddress = "hr:{BULK_BASE + 2 * i}"\n'
        f'type = "float32"\nrate = "{rate}"\n'
        for i in range(tags)
    )
    return (
        f'[agent]\ngateway_id = "bench"\nmetrics = ""\nlog_level = "warning"\n'
        f'data_dir = "{out / "data"}"\n\n[batch]\nwindow = "1s"\n\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{out / "parquet"}"\n\n'
        f'[[sources]]\nname = "plc"\nprotocol = "modbus"\n'
        f'url = "modbus+tcp://127.0.0.1:{sim_port}"\n\n{tag_tables}'
    )


def agent_blocks(toml_text: str) -> list[tuple[int, int]]:
    """(start register, count) of the blocks the agent's Modbus driver reads for this config."""
    source = parse_config(tomllib.loads(toml_text), Path("<bench>")).config.sources[0]
    assert isinstance(source, ModbusSourceConfig)
    planned = plan_blocks(
        source.tags, range(len(source.tags)), source.max_gap, source.max_registers, source.max_bits
    )
    return [(block.start, block.count) for block in planned]


def write_peer_config(
    directory: Path, broker_port: int, sim_port: int, blocks: list[tuple[int, int]], period_ms: int
) -> None:
    """tb_gateway.json, logs.json and modbus.json: one wide-range entry per agent block."""
    directory.mkdir(parents=True)
    gateway = {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": broker_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False},
            "maxPayloadSizeBytes": 65536,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60,
            "handleDeviceRenaming": False,
            "security": {"type": "accessToken", "accessToken": "bench"},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {
            "type": "sqlite",
            "data_file_path": f"{directory / 'data'}/",  # a folder: the file is data.db
            "messages_ttl_check_in_hours": 1,
            "messages_ttl_in_days": 7,
        },
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }
    timeseries = [
        {
            "tag": f"block{index}_${{address}}",  # unique: the connector files replies by tag
            "type": "32float",
            "functionCode": 3,
            "objectsCount": 2,
            "address": f"{start}-{start + count - 1}",
            "maxRegistersPerRequest": count,
        }
        for index, (start, count) in enumerate(blocks)
    ]
    slave = {
        "host": "127.0.0.1",
        "port": sim_port,
        "type": "tcp",
        "method": "socket",
        "unitId": 1,
        "deviceName": "bench",
        "deviceType": "default",
        "timeout": 1,
        "byteOrder": "BIG",
        "wordOrder": "BIG",
        "retries": 0,
        "pollPeriod": period_ms,
        "attributes": [],
        "timeseries": timeseries,
        "attributeUpdates": [],
        "rpc": [],
    }
    console = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    loggers = ("service", "storage", "connector", "converter", "tb_connection", "extension")
    logs = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"console": console},
        "loggers": {
            name: {"handlers": ["console"], "level": "WARNING", "propagate": False}
            for name in loggers
        },
        "root": {"level": "ERROR", "handlers": ["console"]},
    }
    (directory / "tb_gateway.json").write_text(json.dumps(gateway, indent=1))
    (directory / "logs.json").write_text(json.dumps(logs, indent=1))
    (directory / "modbus.json").write_text(json.dumps({"master": {"slaves": [slave]}}, indent=1))


class ServerStandIn:
    """The ThingsBoard side of the peer's MQTT session, on the private broker.

    Answers ``getSessionLimits`` client RPCs and counts telemetry values whose timestamp
    (epoch ms) lies in ``window``; counting happens in paho's network thread.
    """

    def __init__(self, broker_port: int) -> None:
        self.window = (0, 0)
        self.delivered = Delivered(0, 0)
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-server")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe([(TELEMETRY_TOPIC, 1), (RPC_REQUEST + "+", 1)])

    def _on_message(self, client: mqtt.Client, _: object, message: mqtt.MQTTMessage) -> None:
        if message.topic.startswith(RPC_REQUEST):
            request = json.loads(message.payload)
            if request.get("method") == "getSessionLimits":
                request_id = message.topic[len(RPC_REQUEST) :]
                client.publish(RPC_RESPONSE + request_id, json.dumps(SESSION_LIMITS), qos=1)
            return
        start, end = self.window
        points = polls = 0
        for entries in json.loads(message.payload).values():
            for entry in entries:
                if start <= entry["ts"] < end:
                    points += len(entry["values"])
                    polls += FIRST_PEER_KEY in entry["values"]
        with self.lock:
            self.delivered = Delivered(self.delivered.points + points, self.delivered.polls + polls)

    def reset(self, window_ns: tuple[int, int]) -> None:
        with self.lock:
            self.window = (window_ns[0] // 1_000_000, window_ns[1] // 1_000_000)
            self.delivered = Delivered(0, 0)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass(frozen=True)
class Delivered:
    """Points that reached the sink with a time in the measured interval; ``polls``: those
    of the first tag, i.e. the polls whose values came through."""

    points: int
    polls: int


def agent_delivered(parquet_dir: Path, window_ns: tuple[int, int], period_ns: int) -> Delivered:
    """Non-bad rows of the agent's Parquet files whose time lies in ``window_ns``.

    Says which ticks of the interval the first tag misses, if any: at the end, a batch
    not written within the grace; inside, a skipped or doubled-up poll.
    """
    files = sorted(parquet_dir.rglob("*.parquet"))
    if not files:
        return Delivered(0, 0)
    table = pq.ParquetDataset(files).read(columns=["time", "tag", "quality"])
    times = table.column("time").cast("int64").to_numpy()
    quality = table.column("quality").to_numpy()
    first = pc.equal(table.column("tag").cast("string"), FIRST_AGENT_TAG).to_numpy()
    inside = (times >= window_ns[0]) & (times < window_ns[1])
    good = inside & ((quality.astype(np.uint32) & SEVERITY_MASK) != BAD)
    ticks = np.unique((times[good & first] - window_ns[0]) // period_ns)
    missing = np.setdiff1d(np.arange((window_ns[1] - window_ns[0]) // period_ns), ticks)
    if missing.size:
        print(f"  note: the agent's first tag misses tick(s) {missing.tolist()} of the interval")
    return Delivered(int(np.count_nonzero(good)), int(np.count_nonzero(good & first)))


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def process_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` in seconds (its children included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    """One gateway process over a run: what ``measure`` saw."""

    seconds: float  # the measured interval by the monotonic clock
    cpu_s: float
    sim_cpu_s: float
    window: tuple[int, int]  # the measured interval, epoch ns
    rss_kib: list[int]


@dataclass
class Result:
    gateway: str
    tags: int
    round_: int
    window_s: float
    measured: Measured
    delivered: Delivered
    due: int

    @property
    def cpu_per_1000(self) -> float:
        points = self.delivered.points
        return self.measured.cpu_s / points * 1000 if points else float("nan")

    @property
    def rss_steady_mib(self) -> float:
        half = self.measured.rss_kib[len(self.measured.rss_kib) // 2 :]
        return statistics.median(half) / 1024 if half else float("nan")

    @property
    def rss_peak_mib(self) -> float:
        return max(self.measured.rss_kib, default=0) / 1024

    @property
    def share(self) -> float:
        return self.delivered.points / self.due

    def row(self) -> str:
        m, w = self.measured, self.window_s
        return (
            f"{self.tags:>6} {self.round_:>5} {self.gateway:<6} {self.delivered.points / w:>9.0f} "
            f"{self.due / w:>8.0f} {100 * self.share:>7.2f} {self.delivered.polls / w:>7.2f} "
            f"{m.cpu_s:>6.2f} {100 * m.cpu_s / m.seconds:>6.1f} {self.cpu_per_1000:>9.5f} "
            f"{self.rss_steady_mib:>7.1f} {self.rss_peak_mib:>7.1f} "
            f"{100 * m.sim_cpu_s / m.seconds:>6.1f}"
        )


HEADER = (
    f"{'tags':>6} {'round':>5} {'gw':<6} {'pts/s':>9} {'due/s':>8} {'deliv%':>7} {'polls/s':>7} "
    f"{'CPU s':>6} "
    f"{'CPU %':>6} {'s/1000pt':>9} {'RSS MiB':>7} {'peak':>7} {'sim %':>6}"
)


@contextlib.contextmanager
def started(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A gateway process, its output in ``log``; stopped by SIGINT (both stop cleanly on it)."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        yield process
    finally:
        stop(process, signal.SIGINT, 20)


async def measure(
    process: subprocess.Popen[bytes],
    sim_pid: int,
    args: argparse.Namespace,
    on_window: Callable[[tuple[int, int]], None] = lambda _: None,
) -> Measured:
    """Warm-up, the measured interval, then the grace for late deliveries.

    The interval starts on the agent's tick grid (multiples of the period since the epoch).
    The agent stamps a read with the midpoint of its request, a little after its tick, so
    a count by time in the interval counts whole ticks unless a request takes a period.
    ``on_window`` is told the interval as it starts. RSS is sampled every 0.5 s up to the
    interval's end.
    """
    samples: list[int] = []

    async def sample_until(deadline: float) -> None:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}")
            rss = rss_kib(process.pid)
            if rss is not None:
                samples.append(rss)
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    period_ns = args.period_ns
    await sample_until(time.monotonic() + args.warmup)
    t0 = (time.time_ns() // period_ns + 1) * period_ns
    await asyncio.sleep((t0 - time.time_ns()) / 1e9)
    window = (t0, t0 + round(args.duration * 1e9))
    on_window(window)
    start, cpu0, sim0 = time.monotonic(), process_cpu(process.pid), cpu_seconds(sim_pid)
    await sample_until(start + args.duration)
    cpu1, sim1 = process_cpu(process.pid), cpu_seconds(sim_pid)
    seconds = time.monotonic() - start
    await asyncio.sleep(args.grace)
    return Measured(seconds, cpu1 - cpu0, sim1 - sim0, window, samples)


@dataclass
class Setup:
    """What every run of an invocation shares."""

    args: argparse.Namespace
    tmp: Path
    venv: Path
    broker_port: int
    server: ServerStandIn

    def due(self, tags: int) -> int:
        return round(tags * self.args.duration * 1e9 / self.args.period_ns)


async def run_agent(setup: Setup, tags: int, round_: int, sim: tuple[str, int, int]) -> Result:
    out = setup.tmp / f"agent-{tags}-{round_}"
    out.mkdir()
    config = out / "agent.toml"
    config.write_text(agent_toml(sim[1], tags, setup.args.rate, out))
    command = [sys.executable, "-m", "agent.commands.cli", "run", "-c", str(config)]
    with started(command, out / "agent.log") as process:
        measured = await measure(process, sim[2], setup.args)
        # counted before the stop, which flushes the open windows
        delivered = agent_delivered(out / "parquet", measured.window, setup.args.period_ns)
    return Result("agent", tags, round_, setup.args.duration, measured, delivered, setup.due(tags))


async def run_peer(setup: Setup, tags: int, round_: int, sim: tuple[str, int, int]) -> Result:
    out = setup.tmp / f"peer-{tags}-{round_}"
    config_dir = out / "config"
    blocks = agent_blocks(agent_toml(sim[1], tags, setup.args.rate, out))
    period_ms = setup.args.period_ns // 1_000_000
    write_peer_config(config_dir, setup.broker_port, sim[1], blocks, period_ms)
    env = {**os.environ, "TB_GW_CONFIG_DIR": str(config_dir)}
    env.pop("PYTHONPATH", None)
    command = [str(setup.venv / "bin" / "thingsboard-gateway")]
    setup.server.reset((0, 0))
    with started(command, out / "peer.log", env=env, cwd=out) as process:
        measured = await measure(process, sim[2], setup.args, setup.server.reset)
        with setup.server.lock:
            delivered = setup.server.delivered
    return Result("peer", tags, round_, setup.args.duration, measured, delivered, setup.due(tags))


async def run_all(args: argparse.Namespace) -> list[Result]:
    """Per tag count one simulator; rounds of agent then peer, one process at a time."""
    venv = peer_venv(args.cache)
    runners = {"agent": run_agent, "peer": run_peer}
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        async with private_broker(tmp / "broker") as broker:
            setup = Setup(args, tmp, venv, broker.port, ServerStandIn(broker.port))
            try:
                for tags, repeat in zip(args.tags, args.repeat, strict=True):
                    with simulator(tags) as sim:
                        for round_, gateway in itertools.product(
                            range(1, repeat + 1), args.gateways
                        ):
                            print(f"{tags} tags, round {round_}/{repeat}: {gateway}", flush=True)
                            result = await runners[gateway](setup, tags, round_, sim)
                            print("  " + result.row(), flush=True)
                            results.append(result)
            finally:
                setup.server.close()
    return results


def report(results: list[Result], args: argparse.Namespace) -> None:
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"\n{os.cpu_count()} CPUs, Python {platform.python_version()}, peer {PEER} "
        f"{PEER_VERSION} (one wide-range entry per block, SQLite storage); every tag at "
        f"{args.rate}; warm-up {args.warmup:g} s, measured {args.duration:g} s, grace "
        f"{args.grace:g} s; load average at the end {' '.join(load)}\n"
    )
    print(HEADER + "\n" + "-" * len(HEADER))
    for result in results:
        print(result.row())
    print("\nper round, peer/agent: CPU per delivered point, steady RSS; delivered share of due")
    for tags in args.tags:
        rounds = sorted({r.round_ for r in results if r.tags == tags})
        for round_ in rounds:
            pair = {r.gateway: r for r in results if (r.tags, r.round_) == (tags, round_)}
            if set(pair) != set(GATEWAYS):
                continue
            agent, peer = pair["agent"], pair["peer"]
            cpu_ratio = peer.cpu_per_1000 / agent.cpu_per_1000
            met = agent.share >= GOAL_DELIVERED and cpu_ratio >= GOAL_CPU_RATIO
            print(
                f"{tags:>6} tags round {round_}: CPU/pt {cpu_ratio:6.1f}x, RSS "
                f"{peer.rss_steady_mib / agent.rss_steady_mib:4.2f}x; delivered agent "
                f"{100 * agent.share:.2f} %, peer {100 * peer.share:.2f} %"
                + (f"  (goal {'met' if met else 'NOT met'})" if tags == 1000 else "")
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tags", default="100,1000,10000", help="comma-separated tag counts")
    parser.add_argument("--repeat", default="3,3,1", help="rounds per tag count (comma-separated)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=10.0, help="unmeasured seconds first")
    parser.add_argument("--grace", type=float, default=8.0, help="seconds left for delivery")
    parser.add_argument("--rate", default="100ms", help="poll period of every tag")
    parser.add_argument("--only", choices=GATEWAYS, help="run one gateway")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-agent-bench",
        help="where the peer's venv is kept",
    )
    args = parser.parse_args()
    args.tags = [int(n) for n in args.tags.split(",")]
    repeat = [int(n) for n in args.repeat.split(",")]
    args.repeat = (repeat + [repeat[-1]] * len(args.tags))[: len(args.tags)]
    args.period_ns = parse_duration(args.rate)
    args.gateways = GATEWAYS if args.only is None else (args.only,)
    report(asyncio.run(run_all(args)), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
