"""The installed command as plant IT runs it: a real process, signals, and the demo."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from protocols.sparkplug.schema import protobuf_installed
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from simulators.mqtt_broker import broker_class
from tests.conftest import agent_toml, read_store


async def start_agent(config: Path, **options: Any) -> asyncio.subprocess.Process:
    """``edge-agent run -c config`` as its own process, as systemd would start it."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.commands.cli", "run", "-c", str(config), **options
    )


async def test_run_flushes_the_open_window_on_sigterm(
    modbus_plc: ModbusPLCSimulator, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    config = tmp_path / "agent.toml"
    # a long window: without the flush on SIGTERM nothing would be written at all
    config.write_text(agent_toml(store, modbus_plc.agent_config("100ms", points=POINTS[:3]), "1m"))
    process = await start_agent(config, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(3.0)
    stopped_at = time.time_ns()
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr
    assert b"agent stopped" in stderr
    table = read_store(store)
    times = table["time"].cast("int64").to_numpy()
    assert table.num_rows >= 3 * 15
    assert stopped_at - times.max() < 500_000_000, "samples up to the signal were flushed"
    assert len(np.unique(table["tag"].cast("string").to_numpy(zero_copy_only=False))) == 3


async def test_demo_shows_data_flowing_and_where_it_went(tmp_path: Path) -> None:
    out = tmp_path / "demo-data"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.commands.cli",
        "demo",
        "--duration",
        "3",
        "--out",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    text = stdout.decode()
    assert process.returncode == 0, stderr.decode()
    assert "points" in text
    assert "batches" in text
    assert str(out) in text
    assert f"agent state (spool, frame log) in {tmp_path / '.edge-demo-state'}/" in text
    assert f"export {out} --out {out}-export" in text
    page = out.with_name("demo-data-report.html")
    assert f"Quality report (open it in a browser):\n  {page}" in text
    assert page.stat().st_size > 1_000_000, "Plotly's JavaScript is in the page"
    table = read_store(out)
    assert table.num_rows >= len(POINTS) * 20
    assert set(table["gateway"].to_pylist()) == {"demo-gw"}
    mqtt = {"scada_json"} if broker_class() is not None else set()  # a broker can run here
    if mqtt and protobuf_installed():
        mqtt.add("line1")  # the Sparkplug B node on the same broker
    assert set(table["source"].cast("string").to_pylist()) == {"plc1", "cnc1"} | mqtt
    if not mqtt:
        assert "MQTT left out: no broker here" in text

    # the read-back hint runs as printed, from anywhere, and names every tag
    lines = text.splitlines()
    hint = lines[lines.index("Per-tag summary of what was stored:") + 1].strip()
    read_back = await asyncio.create_subprocess_exec(
        *shlex.split(hint), cwd="/", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    summary, problems = await asyncio.wait_for(read_back.communicate(), 60)
    assert read_back.returncode == 0, (hint, problems.decode())
    names = zip(_column(table, "source"), _column(table, "tag"), strict=True)
    for source, tag in set(names):
        assert f"{source}/{tag} " in summary.decode(), f"{source}/{tag} in the summary"


def _column(table: pa.Table, name: str) -> list[str]:
    return table[name].cast("string").to_pylist()  # type: ignore[no-any-return]


async def _demo(out: Path, *options: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.commands.cli", "demo", "--duration", "2", "--out", str(out),
        *options, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_a_demo_run_replaces_the_last_demo_dataset_unless_told_to_append(
    tmp_path: Path,
) -> None:
    out = tmp_path / "demo-data"
    assert (await _demo(out))[0] == 0
    first = {p.name for p in out.rglob("*.parquet")}
    code, text, _ = await _demo(out)
    assert code == 0
    assert "the earlier run's was replaced" in text
    second = {p.name for p in out.rglob("*.parquet")}
    assert second
    assert not first & second, "a fresh dataset: none of the first run's batches is left"
    code, text, _ = await _demo(out, "--append")
    assert code == 0
    assert "appending to the earlier run's dataset" in text
    assert second < {p.name for p in out.rglob("*.parquet")}


async def test_the_demo_never_deletes_a_folder_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.parquet").write_bytes(b"precious")
    code, _, err = await _demo(out)
    assert code == 2
    assert "did not write" in err
    assert (out / "thesis.parquet").read_bytes() == b"precious"


async def test_run_tells_systemd_it_is_ready_feeds_the_watchdog_and_stops(
    modbus_plc: ModbusPLCSimulator, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(agent_toml(tmp_path / "store", modbus_plc.agent_config(points=POINTS[:1])))
    notify_path = tmp_path / "notify.sock"
    messages: list[str] = []

    async def listen(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            messages.append((await loop.sock_recv(sock, 256)).decode())

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(notify_path))
        notify_socket.setblocking(False)
        listener = asyncio.create_task(listen(notify_socket))
        environment = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
        process = await start_agent(config, env=environment, stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(2.0)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 20)
        await asyncio.sleep(0.1)
        listener.cancel()
    assert process.returncode == 0
    assert "READY=1" in messages
    assert messages.count("WATCHDOG=1") >= 10, "fed every 100 ms for 2 s"
    stopping = messages.index("STOPPING=1")
    assert stopping > messages.index("READY=1")
    # the watchdog is fed until the process ends: pings may follow, nothing else
    assert set(messages[stopping + 1 :]) <= {"WATCHDOG=1"}
