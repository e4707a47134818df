"""The agent's resident memory (RSS): steady, peak and growth over a run (issue 17).

Why: a gateway has a few hundred MiB for everything; the agent must stay small and flat.
Goals: <= 80 MiB steady at 1,000 Modbus tags @ 100 ms, <= 150 MiB at 10,000 tags of
mixed protocols, < 5 % growth over an hour at 10,000 tags.

Each scenario runs the agent as it runs in production, ``edge-agent run -c <toml>`` in its
own process, against simulators in their own processes (``edge-agent simulate modbus
--bulk-tags N``, ``simulate opcua --bulk-tags N --update 100ms``, ``simulate mqtt`` on a
private mosquitto). ``VmRSS`` (and its anonymous/file split) is read from
``/proc/<pid>/status`` every ``--interval`` seconds. Figures:

- steady: median of the samples of the run's last half;
- peak: the largest sample;
- growth: median of the last 10 % of the samples against the median of the first 10 %
  after ``--warmup`` (so a one-hour run measures growth over nearly the whole hour);
- points/s from the agent's ``edge_agent_points_in_total`` (proof the load was there).

At the end of each run the agent's ``/proc/<pid>/smaps`` is summed by mapping (Python,
numpy, pyarrow, other shared libraries, heap and anonymous memory) to show where the RSS
is. Before the scenarios, import-only figures: a process importing what ``edge-agent run``
imports for a Modbus config, and the libraries alone, one at a time, so the fixed cost is
visible.

    python bench/bench_memory.py --scenario modbus1k,mixed10k --minutes 3
    python bench/bench_memory.py --scenario mixed10k --minutes 60
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from processes import stop

from simulators.mqtt_scada import MqttScadaSimulator

BULK_BASE = 1000  # simulators.modbus_plc.BULK_BASE
CLI = [sys.executable, "-m", "agent.commands.cli"]
MIB = 1024 * 1024

# name -> (Modbus tags, OPC UA tags, MQTT simulator on or off); MQTT adds its plant's tags
SCENARIOS = {
    "modbus1k": (1000, 0, False),
    "mixed10k": (7000, 2964, True),  # + 36 MQTT tags (12 per shape, 3 shapes) = 10,000
    "modbus10k": (10000, 0, False),
}
GOALS_MIB = {"modbus1k": 80, "mixed10k": 150, "modbus10k": 150}

# import-only: the libraries alone, then what ``edge-agent run`` loads for a Modbus source,
# and for the mixed scenario's (asyncua with cryptography, paho)
IMPORTS = [
    ("python", ""),
    ("numpy", "numpy"),
    ("numpy + pyarrow.parquet", "numpy, pyarrow.parquet"),
    ("+ pydantic", "numpy, pyarrow.parquet, pydantic"),
    (
        "+ structlog, prometheus_client",
        "numpy, pyarrow.parquet, pydantic, structlog, prometheus_client",
    ),
    (
        "+ pymodbus",
        "numpy, pyarrow.parquet, pydantic, structlog, prometheus_client, pymodbus.client",
    ),
    ("agent run, Modbus source", "agent.commands.cli, agent.runtime, protocols.modbus"),
    (
        "agent run, mixed10k's sources",
        "agent.commands.cli, agent.runtime, protocols.modbus, protocols.opcua, protocols.mqtt",
    ),
]


def status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile (bytes) of a process."""
    figures: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                figures[key] = int(rest.split()[0]) * 1024
    return figures


def smaps_breakdown(pid: int) -> dict[str, int]:
    """RSS by kind of mapping: which library file, the heap, anonymous memory."""
    sums: dict[str, int] = {}
    name = "anon"
    with open(f"/proc/{pid}/smaps") as file:
        for line in file:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                path = head[5] if len(head) > 5 else ""
                name = _kind(path)
            elif head and head[0] == "Rss:":
                sums[name] = sums.get(name, 0) + int(head[1]) * 1024
    return dict(sorted(sums.items(), key=lambda item: -item[1]))


def _kind(path: str) -> str:
    if not path:
        return "anonymous (malloc arenas, thread stacks, pyarrow pool)"
    if path == "[heap]":
        return "[heap] (brk: Python objects, malloc)"
    if path.startswith("["):
        return "other ([stack], [vvar], ...)"
    for key, label in (
        ("pyarrow", "pyarrow libraries (.so)"),
        ("numpy", "numpy libraries (.so)"),
        ("pydantic_core", "pydantic_core (.so)"),
        ("libpython", "libpython / python binary"),
        ("/bin/python", "libpython / python binary"),
        ("site-packages", "other site-packages (.so)"),
        ("lib-dynload", "python stdlib extensions (.so)"),
        (".so", "system libraries (libc, libssl, libsqlite3, ...)"),
    ):
        if key in path:
            return label
    return "other files (locale, ...)"


def import_only(python: str) -> list[tuple[str, dict[str, int]]]:
    """RSS of processes that import the listed modules and nothing else."""
    rows = []
    for label, modules in IMPORTS:
        code = (
            "import importlib, sys\n"
            f"for m in {modules!r}.split(','):\n"
            "    m.strip() and importlib.import_module(m.strip())\n"
            "print(open('/proc/self/status').read())"
        )
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
        figures = {
            key: int(rest.split()[0]) * 1024
            for key, _, rest in (line.partition(":") for line in out.stdout.splitlines())
            if key in ("VmRSS", "RssAnon", "RssFile")
        }
        rows.append((label, figures))
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def process(
    command: list[str], pattern: str | None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A child process; ``pattern`` (a regex) is waited for in its first line of output."""
    quiet = subprocess.DEVNULL
    child = subprocess.Popen(command, stdout=subprocess.PIPE if pattern else quiet, stderr=quiet)
    try:
        found = ""
        if pattern:
            assert child.stdout is not None
            line = child.stdout.readline().decode()
            match = re.search(pattern, line)
            if match is None:
                raise RuntimeError(f"{command[3:5]} did not start: {line!r}")
            found = match.group(1)
        yield child, found
    finally:
        stop(child, signal.SIGTERM, 30)


def agent_toml(
    out: Path, metrics_port: int, modbus: str, opcua: str, mqtt: str, counts: tuple[int, int]
) -> str:
    modbus_tags, opcua_tags = counts
    text = (
        f'[agent]\ngateway_id = "bench"\nmetrics = "127.0.0.1:{metrics_port}"\n'
        f'log_level = "warning"\nlog_format = "json"\ndata_dir = "{out / "data"}"\n\n'
        f'[batch]\nwindow = "1s"\n\n[[uplinks]]\ntype = "parquet"\npath = "{out / "parquet"}"\n\n'
    )
    if modbus_tags:
        text += f'[[sources]]\nname = "plc"\nprotocol = "modbus"\nurl = "modbus+tcp://{modbus}"\n\n'
        text += "".join(
            f'[[sources.tags]]\nname = "bulk{i}"\naddress = "hr:{BULK_BASE + 2 * i}"\n'
            'type = "float32"\nrate = "100ms"\n'
            for i in range(modbus_tags)
        )
    if opcua_tags:
        text += (
            f'\n[[sources]]\nname = "cnc"\nprotocol = "opcua"\nurl = "{opcua}"\ntimeout = "30s"\n\n'
        )
        text += "".join(
            f'[[sources.tags]]\nname = "bulk{i}"\nnode = "ns=2;s=Bulk.{i}"\nrate = "100ms"\n'
            for i in range(opcua_tags)
        )
    if mqtt:
        text += "\n" + MqttScadaSimulator(0).agent_config(url=mqtt)
    return text


@contextlib.contextmanager
def simulators(scenario: str, tmp: Path) -> Iterator[tuple[str, str, str]]:
    """The scenario's simulators (and broker), each in its own process."""
    modbus_tags, opcua_tags, with_mqtt = SCENARIOS[scenario]
    with contextlib.ExitStack() as stack:
        modbus = opcua = mqtt = ""
        if modbus_tags:
            command = [*CLI, "simulate", "modbus", "--port", "0", "--bulk-tags", str(modbus_tags)]
            modbus = stack.enter_context(process(command, r"listening on ([\d.]+:\d+)"))[1]
        if opcua_tags:
            command = [*CLI, "simulate", "opcua", "--port", "0", "--bulk-tags", str(opcua_tags)]
            command += ["--update", "100ms"]
            opcua = stack.enter_context(process(command, r"listening on (\S+)"))[1]
        if with_mqtt:
            port = free_port()
            config = tmp / "mosquitto.conf"
            config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
            binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            stack.enter_context(process([binary, "-c", str(config)], None))
            time.sleep(0.5)
            mqtt = f"mqtt://127.0.0.1:{port}"
            command = [*CLI, "simulate", "mqtt", "--broker", mqtt, "--period", "100ms"]
            stack.enter_context(process(command, r"(publishing)"))
        yield modbus, opcua, mqtt


def points_in(port: int) -> float:
    """edge_agent_points_in_total summed over sources, from the agent's /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return float("nan")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("edge_agent_points_in_total{")
    )


@dataclass
class Run:
    scenario: str
    seconds: float
    warmup_s: float
    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    anon: list[int] = field(default_factory=list)
    points_per_s: float = float("nan")
    breakdown: dict[str, int] = field(default_factory=dict)
    threads: int = 0

    def steady(self, values: list[int]) -> float:
        return statistics.median(values[len(values) // 2 :]) / MIB

    def growth(self) -> float:
        settled = [r for t, r in zip(self.times, self.rss, strict=True) if t >= self.warmup_s]
        tenth = max(1, len(settled) // 10)
        first, last = statistics.median(settled[:tenth]), statistics.median(settled[-tenth:])
        return 100.0 * (last - first) / first


def measure(scenario: str, args: argparse.Namespace) -> Run:
    modbus_tags, opcua_tags, _ = SCENARIOS[scenario]
    with tempfile.TemporaryDirectory() as name, simulators(scenario, Path(name)) as endpoints:
        tmp = Path(name)
        metrics_port = free_port()
        toml = tmp / "agent.toml"
        toml.write_text(agent_toml(tmp, metrics_port, *endpoints, (modbus_tags, opcua_tags)))
        env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.env))
        log = (tmp / "agent.log").open("wb")
        command = [args.python, "-m", "agent.commands.cli", "run", "-c", str(toml)]
        agent = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        run = Run(scenario, args.minutes * 60.0, args.warmup)
        start = time.monotonic()
        first_points: tuple[float, float] | None = None
        try:
            while (elapsed := time.monotonic() - start) < run.seconds:
                if agent.poll() is not None:
                    raise RuntimeError(
                        f"the agent ended: {(tmp / 'agent.log').read_text()[-2000:]}"
                    )
                figures = status(agent.pid)
                run.times.append(elapsed)
                run.rss.append(figures["VmRSS"])
                run.anon.append(figures["RssAnon"])
                if first_points is None and elapsed >= args.warmup:
                    first_points = (time.monotonic(), points_in(metrics_port))
                time.sleep(args.interval)
            if first_points is not None:
                seconds = time.monotonic() - first_points[0]
                run.points_per_s = (points_in(metrics_port) - first_points[1]) / seconds
            run.breakdown = smaps_breakdown(agent.pid)
            run.threads = len(os.listdir(f"/proc/{agent.pid}/task"))
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
            log.close()
    return run


def report(
    runs: list[Run], imports: list[tuple[str, dict[str, int]]], args: argparse.Namespace
) -> None:
    print(
        f"\n{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load before: {args.load}; env: {' '.join(args.env) or '-'}; agent: {args.python}"
    )
    print("\nimport-only RSS (MiB): total = anonymous + file-backed")
    for label, figures in imports:
        print(
            f"  {label:<34} {figures['VmRSS'] / MIB:6.1f} = {figures['RssAnon'] / MIB:5.1f}"
            f" + {figures['RssFile'] / MIB:5.1f}"
        )
    print(
        f"\n{'scenario':<10} {'min':>5} {'steady':>7} {'anon':>6} {'peak':>6} "
        f"{'growth':>7} {'goal':>5} {'points/s':>9} {'threads':>7}"
    )
    for run in runs:
        print(
            f"{run.scenario:<10} {run.seconds / 60:5.1f} {run.steady(run.rss):7.1f} "
            f"{run.steady(run.anon):6.1f} {max(run.rss) / MIB:6.1f} {run.growth():+6.1f}% "
            f"{GOALS_MIB[run.scenario]:5d} {run.points_per_s:9.0f} {run.threads:7d}"
        )
    for run in runs:
        print(f"\n{run.scenario}: RSS by mapping at the end (MiB)")
        for kind, size in run.breakdown.items():
            print(f"  {size / MIB:6.1f}  {kind}")
        if args.trace:
            step = max(1, len(run.rss) // 20)
            trace = " ".join(f"{r / MIB:.0f}" for r in run.rss[::step])
            print(f"  RSS every {step * args.interval:g} s: {trace}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario", default="modbus1k,mixed10k", help=f"of {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="each scenario's run")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before growth counts")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the agent")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter of the agent (and of the import-only figures), e.g. a venv "
        "made with a plain 'pip install .' (no test tools; simulators run with this one)",
    )
    parser.add_argument("--trace", action="store_true", help="print the RSS curve too")
    parser.add_argument("--no-imports", action="store_true", help="skip the import-only figures")
    args = parser.parse_args()
    args.load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    imports = [] if args.no_imports else import_only(args.python)
    runs = []
    for scenario in args.scenario.split(","):
        print(f"{scenario}: {args.minutes:g} min ...", flush=True)
        runs.append(measure(scenario, args))
    report(runs, imports, args)


if __name__ == "__main__":
    main()
