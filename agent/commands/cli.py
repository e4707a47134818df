"""The ``edge-agent`` command: run, check, simulate, demo, collect.

Config problems print one line each (file, key path, expectation) and exit with status 2;
no traceback reaches plant IT for a mistake in a file. A folder the agent must write
(``data_dir``, a local parquet path) that cannot be created or written is such a problem,
found by ``check``, ``run`` and ``collect`` before anything starts (see agent/config/paths.py).
The systemd unit does not restart on status 2: restarting cannot fix a file.

A file or folder the system refuses once ``run`` or ``collect`` has begun (a read-only
remount, a spool locked by a second agent) ends the process with one log line and status
74 (``EX_IOERR`` of sysexits.h), which the unit's ``Restart=on-failure`` retries: such a
fault may clear.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import traceback
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent import __version__
from agent.commands.reload import add_reload_parser
from agent.commands.report import (
    add_export_arguments,
    add_report_arguments,
    run_export,
    run_report,
)
from agent.commands.signals import install_reload_signal, install_stop_signals
from agent.commands.status import add_status_parser
from agent.config.durations import format_duration, parse_duration
from agent.config.load import ConfigError, LoadedConfig, load_config
from agent.config.model import AgentSection
from agent.config.paths import agent_dirs, collect_dirs, require_writable
from agent.config.secrets import refuse_url_credentials
from agent.ops.logs import configure
from protocols.sdk import rate_summary

EXIT_CONFIG = 2
EXIT_IO = 74  # sysexits EX_IOERR: the system refused a file; systemd restarts on it
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a reader that went away
_OWN_PACKAGES = {"agent", "protocols"}  # where _where looks for the line that failed

log = structlog.get_logger("edge_agent.cli")


EXIT_CODES = """\
exit codes:
  0    stopped cleanly (every batch written to the spool; unsent ones wait there)
  1    a supervised task could not be kept alive, or a command failed (e.g. browse)
  2    the config (or a command-line value) is wrong: nothing started
  3    status, reload: no agent answers at its endpoint
  74   the operating system refused a file (read-only remount, spool in use)
  130  interrupted (Ctrl-C) outside run/collect/demo
  141  the reader of the output went away (| head)"""


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary shows in ``edge-agent -h`` and atop its own help."""
    return commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Acquire, clean, time-align and forward industrial data.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "TOML config file"

    run = _command(commands, "run", "run the agent until stopped (SIGTERM/SIGINT)")
    run.add_argument("-c", "--config", required=True, type=Path, help=config_help)

    collect = _command(
        commands, "collect", "central side: gateways' MQTT batches into a parquet or postgres store"
    )
    collect.add_argument("-c", "--config", required=True, type=Path, help="collector TOML file")

    check = _command(commands, "check", "validate a config file and summarise it")
    check.add_argument("-c", "--config", required=True, type=Path, help=config_help)

    add_status_parser(commands)
    add_reload_parser(commands)

    _simulators(_command(commands, "simulate", "run a bundled device simulator"))

    browse = _command(
        commands, "browse", "walk an OPC UA server and print a source to paste into a config"
    )
    browse.add_argument("url", help="opc.tcp://host:port[/path] of the server")
    browse.add_argument("--depth", type=int, default=6, help="levels below Objects")
    browse.add_argument("--filter", default=None, help='glob on tag names, e.g. "CNC.Spindle*"')
    browse.add_argument("--rate", default="1s", help="rate written into every tag")
    browse.add_argument("--name", default="opcua1", help="name of the printed source")
    browse.add_argument(
        "--config", action="store_true", help="print a whole config that check accepts"
    )

    certs = _command(commands, "certs", "show or regenerate the OPC UA client certificate")
    certs.add_argument("-c", "--config", type=Path, help="config file (for agent.data_dir)")
    certs.add_argument("--regenerate", action="store_true", help="make a new certificate")

    report = _command(
        commands, "report", "data-quality figures of a stored dataset, per tag and source"
    )
    add_report_arguments(report)
    add_export_arguments(
        _command(commands, "export", "a dataset as one wide table, with a data card")
    )

    demo = _command(commands, "demo", "simulators + agent + a local Parquet dataset, live")
    demo.add_argument("--duration", type=float, default=15.0, help="seconds; 0 runs until Ctrl-C")
    demo.add_argument("--out", type=Path, default=Path("edge-demo-data"), help="dataset folder")
    demo.add_argument("--rate", default="100ms", help="poll rate of the demo tags")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulated signals")
    demo.add_argument(
        "--append",
        action="store_true",
        help="add to the dataset of an earlier run instead of starting a fresh one",
    )
    return parser


def _simulators(simulate: argparse.ArgumentParser) -> None:
    devices = simulate.add_subparsers(dest="device", required=True, metavar="DEVICE")
    host_help = "address to listen on"
    seed_help = "seed of the simulated signals and faults"
    modbus = _command(devices, "modbus", "Modbus TCP (or RTU) PLC of a CNC cell")
    modbus.add_argument("--host", default="127.0.0.1", help=host_help)
    modbus.add_argument("--port", type=int, default=5020, help="TCP port; 0 picks a free one")
    modbus.add_argument("--seed", type=int, default=0, help=seed_help)
    modbus.add_argument("--unit-id", type=int, default=1, help="Modbus unit (slave) id served")
    modbus.add_argument("--bulk-tags", type=int, default=0, help="extra float32 tags at hr:1000")
    modbus.add_argument(
        "--exception-rate",
        type=float,
        default=0.0,
        help="share of requests answered by an exception",
    )
    modbus.add_argument(
        "--timeout-rate", type=float, default=0.0, help="share of requests never answered"
    )
    modbus.add_argument(
        "--disconnect-every", type=float, default=0.0, help="drop every connection every N seconds"
    )
    modbus.add_argument(
        "--serial", metavar="PORT", help="serve Modbus RTU on this serial port instead of TCP"
    )
    modbus.add_argument("--baudrate", type=int, default=19200, help="with --serial")
    modbus.add_argument("--parity", choices=["N", "E", "O"], default="E", help="with --serial")

    opcua = _command(devices, "opcua", "OPC UA server of a CNC machine")
    opcua.add_argument("--host", default="127.0.0.1", help=host_help)
    opcua.add_argument("--port", type=int, default=4840, help="TCP port; 0 picks a free one")
    opcua.add_argument("--seed", type=int, default=0, help=seed_help)
    opcua.add_argument("--security", action="store_true", help="Sign/SignAndEncrypt endpoints")
    opcua.add_argument("--cert-dir", type=Path, default=None, help="where its certificate lives")
    opcua.add_argument("--user", action="append", default=[], help="NAME:PASSWORD (repeatable)")
    opcua.add_argument("--clock-offset", default="0s", help='source clock skew, e.g. "5s"')
    opcua.add_argument(
        "--clock-drift-ppm", type=float, default=0.0, help="source clock drift, parts per million"
    )
    opcua.add_argument(
        "--server-clock-offset", default="0s", help='server clock skew (both stamps), e.g. "5s"'
    )
    opcua.add_argument(
        "--server-clock-drift-ppm", type=float, default=0.0, help="server clock drift, ppm"
    )
    opcua.add_argument("--bulk-tags", type=int, default=0, help="extra Double variables")
    opcua.add_argument("--update", default="50ms", help="how often values change")

    mqtt = _command(devices, "mqtt", "MQTT SCADA/DCS publisher of a boiler house")
    mqtt.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    mqtt.add_argument("--seed", type=int, default=0, help=seed_help)
    mqtt.add_argument("--prefix", default="plant", help="first topic level")
    mqtt.add_argument("--shapes", default="plain,json,pattern", help="payload shapes to publish")
    mqtt.add_argument("--period", default="1s", help="how often values are published")
    mqtt.add_argument(
        "--qos", type=int, default=1, choices=(0, 1, 2), help="MQTT QoS of the publications"
    )
    mqtt.add_argument("--fault-rate", type=float, default=0.0, help="share of broken messages")
    mqtt.add_argument("--burst", type=int, default=1, help="publish N periods at once")
    mqtt.add_argument("--clock-offset", default="0s", help='publisher clock skew, e.g. "5s"')
    mqtt.add_argument(
        "--clock-drift-ppm", type=float, default=0.0, help="publisher clock drift, ppm"
    )
    mqtt.add_argument(
        "--epoch-unit",
        default="ms",
        choices=("s", "ms", "us", "ns"),
        help="unit of the epoch timestamps in payloads",
    )
    mqtt.add_argument(
        "--mqtt-version", default="5", choices=("3.1.1", "5"), help="MQTT protocol version"
    )

    spb = _command(devices, "sparkplug", "Sparkplug B edge node of a machining line")
    spb.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    spb.add_argument("--seed", type=int, default=0, help=seed_help)
    spb.add_argument("--group", default="Plant1", help="Sparkplug group id")
    spb.add_argument("--node", default="Line1", help="edge node id")
    spb.add_argument("--period", default="1s", help="how often data is published")
    spb.add_argument("--qos", type=int, default=1, choices=(0, 1), help="MQTT QoS of the data")
    spb.add_argument("--faults", default="", help='e.g. "gap=50,ghost,malformed=20,rebirth=30s"')
    spb.add_argument(
        "--mqtt-version", default="5", choices=("3.1.1", "5"), help="MQTT protocol version"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _dispatch(_parser().parse_args(argv))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
    except BrokenPipeError:
        # the reader went away (``edge-agent check ... | head -1``): stop quietly, as
        # ``cat`` would, and keep Python from complaining again when it exits
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "check":
            return _check(load_config(args.config))
        if args.command == "run":
            loaded = load_config(args.config)
            require_writable(loaded.path, agent_dirs(loaded.config), keep=True)
            configure(loaded.config.agent.log_level, loaded.config.agent.log_format)
            return _until_stopped("run", _run(loaded))
        if args.command == "collect":
            return _collect(args.config)
        if args.command in ("status", "reload"):
            return int(args.main(args))
        if args.command == "simulate":
            configure("info")
            simulators = {
                "modbus": _simulate_modbus,
                "opcua": _simulate_opcua,
                "mqtt": _simulate_mqtt,
                "sparkplug": _simulate_sparkplug,
            }
            asyncio.run(simulators[args.device](args))
            return 0
        if args.command == "browse":
            configure("warning")
            return asyncio.run(_browse(args))
        if args.command == "certs":
            configure("warning")
            data_dir = load_config(args.config).config.agent.data_dir if args.config else None
            return _certs(data_dir or AgentSection().data_dir, args.regenerate)
        if args.command == "report":
            return run_report(args)
        if args.command == "export":
            return run_export(args)
        if args.command == "demo":
            from agent.commands.demo import run_demo

            return run_demo(args.duration, args.out, args.rate, args.seed, args.append)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return 1


def _check(loaded: LoadedConfig) -> int:
    config = loaded.config
    require_writable(loaded.path, agent_dirs(config), keep=False)
    print(f"{loaded.path}: OK (config hash {loaded.config_hash})")
    print(
        f"gateway {config.agent.gateway_id}: window {format_duration(config.batch.window)}, "
        f"lateness {format_duration(config.batch.lateness)}, data_dir {config.agent.data_dir}"
    )
    for source in config.sources:
        driver = loaded.drivers[source.name](source)
        state = "" if source.enabled else " [disabled]"
        print(
            f"source {source.name} ({source.protocol}){state}: {len(source.tags)} tags "
            f"({rate_summary(source.tags)}){driver.describe()}"
        )
    for uplink in config.uplinks:
        print(f"uplink {uplink.name} ({uplink.type}) -> {uplink.target}")
    return 0


def _until_stopped(command: str, main: Coroutine[Any, Any, int | None]) -> int:
    """Run the agent or the collector until it stops; its status, or 0. An OS error that
    ends it (nothing inside handles it) is one log line naming where it came from, not a
    traceback."""
    try:
        return asyncio.run(main) or 0
    except (OSError, sqlite3.OperationalError) as exc:
        log.error(
            "stopped by an operating-system error",
            command=command,
            error=f"{type(exc).__name__}: {exc}",
            at=_where(exc),
        )
        return EXIT_IO


def _where(exc: BaseException) -> str:
    """``agent/store/spool.py:139``: the deepest line of edge-agent's own code the error passed."""
    root = Path(__file__).resolve().parents[2]  # the folder holding agent/ and protocols/
    where = ""
    for frame, line in traceback.walk_tb(exc.__traceback__):
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(root) and path.relative_to(root).parts[0] in _OWN_PACKAGES:
            where = f"{path.relative_to(root)}:{line}"
    return where


async def _run(loaded: LoadedConfig) -> int:
    """1 when a task of the agent could not be kept alive: systemd restarts it."""
    from agent.runtime import Agent

    stop, reload = asyncio.Event(), asyncio.Event()
    install_stop_signals(stop)
    install_reload_signal(reload)
    agent = Agent(loaded)
    await agent.run(stop, reload)
    return 1 if agent.failed else 0


def _collect(path: Path) -> int:
    from agent.commands.collect import Collector, load_collect_config

    config = load_collect_config(path)
    require_writable(path, collect_dirs(config), keep=True)
    configure(config.log_level, config.log_format)

    async def collect() -> int:
        stop = asyncio.Event()
        install_stop_signals(stop)
        collector = Collector(config)
        await collector.run(stop)
        return 1 if collector.failed else 0

    return _until_stopped("collect", collect())


async def _simulate_modbus(args: argparse.Namespace) -> None:
    from simulators.modbus_plc import ModbusPLCSimulator

    simulator = ModbusPLCSimulator(
        args.seed,
        unit_id=args.unit_id,
        bulk_tags=args.bulk_tags,
        exception_rate=args.exception_rate,
        timeout_rate=args.timeout_rate,
        disconnect_every_s=args.disconnect_every,
    )
    if args.serial:
        await simulator.start_serial(args.serial, args.baudrate, args.parity)
        where = f"Modbus RTU on {args.serial} at {args.baudrate} baud, 8{args.parity}1"
    else:
        where = f"{args.host}:{await simulator.start(args.host, args.port)}"
    await _serve(simulator, f"modbus simulator listening on {where} (seed {args.seed})")


async def _simulate_opcua(args: argparse.Namespace) -> None:
    from simulators.opcua_cnc import OpcUaCncSimulator

    users = dict(user.split(":", 1) for user in args.user) or None
    simulator = OpcUaCncSimulator(
        args.seed,
        security=args.security,
        cert_dir=args.cert_dir,
        users=users,
        clock_offset_ns=parse_duration(args.clock_offset) if args.clock_offset != "0s" else 0,
        clock_drift_ppm=args.clock_drift_ppm,
        server_clock_offset_ns=(
            parse_duration(args.server_clock_offset) if args.server_clock_offset != "0s" else 0
        ),
        server_clock_drift_ppm=args.server_clock_drift_ppm,
        bulk_tags=args.bulk_tags,
        update_ns=parse_duration(args.update),
    )
    await simulator.start(args.host, args.port)
    await _serve(simulator, f"opcua simulator listening on {simulator.url} (seed {args.seed})")


async def _simulate_mqtt(args: argparse.Namespace) -> None:
    from simulators.mqtt_scada import MqttScadaSimulator

    simulator = MqttScadaSimulator(
        args.seed,
        prefix=args.prefix,
        shapes=[shape.strip() for shape in args.shapes.split(",") if shape.strip()],
        period_ns=parse_duration(args.period),
        qos=args.qos,
        clock_offset_ns=parse_duration(args.clock_offset) if args.clock_offset != "0s" else 0,
        clock_drift_ppm=args.clock_drift_ppm,
        fault_rate=args.fault_rate,
        burst=args.burst,
        epoch_unit=args.epoch_unit,
        mqtt_version=args.mqtt_version,
    )
    await simulator.start(args.broker)
    await _serve(simulator, f"mqtt simulator publishing to {args.broker} (seed {args.seed})")


async def _simulate_sparkplug(args: argparse.Namespace) -> None:
    from simulators.sparkplug_node import from_cli

    simulator = from_cli(
        args.seed,
        args.group,
        args.node,
        parse_duration(args.period),
        args.qos,
        args.faults,
        args.mqtt_version,
    )
    await simulator.start(args.broker)
    where = f"{args.group}/{args.node} publishing to {args.broker}"
    await _serve(simulator, f"sparkplug edge node {where} (seed {args.seed})")


class _Stoppable(Protocol):
    async def stop(self) -> None: ...


async def _serve(simulator: _Stoppable, started: str) -> None:
    """Say where a started simulator is (tests and benches parse the line), run it until
    SIGINT/SIGTERM, then stop it."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    print(started, flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.stop()


def _browse_url(url: str) -> str:
    """The URL if browse can use it, else a ConfigError saying what it expected."""
    if "://" not in url:
        problem = f'{url!r} has no scheme: did you mean "opc.tcp://{url}"?'
    elif not url.startswith("opc.tcp://"):
        problem = f'expected "opc.tcp://host:port[/path]", not a {url.split("://")[0]}:// url'
    else:
        try:
            return refuse_url_credentials(url)
        except ValueError as exc:
            problem = str(exc)
    raise ConfigError("browse", [("url", problem)])


async def _browse(args: argparse.Namespace) -> int:
    url = _browse_url(args.url)
    from asyncua import Client

    from protocols.opcua.browse import browse, to_toml

    try:
        async with Client(url, timeout=10) as client:
            variables = await browse(client, args.depth, args.filter)
    except Exception as exc:
        print(f"cannot browse {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not variables:
        print(f"no variables found below Objects of {url} (--depth, --filter?)", file=sys.stderr)
        return 1
    print(to_toml(variables, url, args.rate, args.name, args.config))
    return 0


def _certs(data_dir: Path, regenerate: bool) -> int:
    from protocols.opcua.security import (
        Pki,
        application_uri,
        describe_certificate,
        ensure_own_certificate,
    )

    pki = Pki(data_dir / "pki")
    ensure_own_certificate(pki, regenerate)
    print(f"certificate {pki.certificate}")
    print(f"private key {pki.private_key}")
    print(f"application URI {application_uri()}")
    print(describe_certificate(pki.certificate.read_bytes()))
    print(f"trusted servers in {pki.trusted}/, refused ones land in {pki.rejected}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
