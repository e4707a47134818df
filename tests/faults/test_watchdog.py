"""The systemd watchdog is fed only while the agent makes progress.

A fake ``NOTIFY_SOCKET`` records the pings of an agent running in this process; then the
closer or a forwarder is made to hang, or to crash every time it starts, and the pings must
stop within two watchdog intervals (systemd would then restart the service)."""

from __future__ import annotations

import asyncio
import socket
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config.load import parse_config
from agent.ops.tasks import Heartbeat
from agent.runtime import Agent
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from tests.conftest import agent_toml

WATCHDOG_S = 3.0  # WatchdogSec: pings every 1.5 s


class Pings:
    def __init__(self) -> None:
        self.at: list[float] = []

    async def listen(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if (await loop.sock_recv(sock, 256)) == b"WATCHDOG=1":
                self.at.append(time.monotonic())


@pytest.fixture
async def pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Pings]:
    path = tmp_path / "notify.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", str(int(WATCHDOG_S * 1e6)))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    found = Pings()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        listener = asyncio.create_task(found.listen(sock))
        yield found
        listener.cancel()


def make_agent(tmp_path: Path, plc: ModbusPLCSimulator) -> Agent:
    text = agent_toml(tmp_path / "store", plc.agent_config(points=POINTS[:2]))
    text = text.replace(
        'type = "parquet"\n', 'type = "parquet"\nsend_timeout = "500ms"\nbackoff_max = "500ms"\n'
    )
    return Agent(parse_config(tomllib.loads(text), Path("test.toml")))


async def run_with_fault(agent: Agent, pings: Pings, fault_after_s: float) -> float:
    """Run the agent; returns the monotonic time at which the fault began."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(fault_after_s)
    began = time.monotonic()
    await asyncio.sleep(2 * WATCHDOG_S + 1.0)
    stop.set()
    await asyncio.wait_for(task, 30)
    return began


def hanging_after(seconds: float) -> Callable[..., Any]:
    async def run(*args: Any) -> None:
        heartbeat: Heartbeat = args[-1]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            heartbeat.beat()
            await asyncio.sleep(0.05)
        await asyncio.Event().wait()  # stuck: never beats again

    return run


def crashing_after(seconds: float) -> Callable[..., Any]:
    started = time.monotonic()

    async def run(*args: Any) -> None:
        heartbeat: Heartbeat = args[-1]
        while time.monotonic() - started < seconds:
            heartbeat.beat()
            await asyncio.sleep(0.05)
        raise RuntimeError("injected crash")

    return run


def assert_pings_stopped(pings: Pings, began: float) -> None:
    before = [t for t in pings.at if t < began]
    assert len(before) >= 2, "the watchdog was fed while all was well"
    after = [t - began for t in pings.at if t >= began]
    assert all(t <= 2 * WATCHDOG_S for t in after), f"pings {after} s after the fault"
    assert not [t for t in after if t > WATCHDOG_S + 1.0], "pings stopped for good"


@pytest.mark.slow
@pytest.mark.parametrize("fault", [hanging_after, crashing_after], ids=["stalled", "dead"])
async def test_the_watchdog_starves_when_the_closer_stops(
    tmp_path: Path, modbus_plc: ModbusPLCSimulator, pings: Pings, fault: Callable[..., Any]
) -> None:
    agent = make_agent(tmp_path, modbus_plc)
    agent._close_windows = fault(3.5)  # type: ignore[method-assign]
    began = await run_with_fault(agent, pings, 3.5)
    assert_pings_stopped(pings, began)
    assert "task:closer" in agent.health()["failed"] or agent.failed


@pytest.mark.slow
@pytest.mark.parametrize("fault", [hanging_after, crashing_after], ids=["stalled", "dead"])
async def test_the_watchdog_starves_when_a_forwarder_stops(
    tmp_path: Path, modbus_plc: ModbusPLCSimulator, pings: Pings, fault: Callable[..., Any]
) -> None:
    agent = make_agent(tmp_path, modbus_plc)
    agent.forwarder.run = fault(3.5)  # type: ignore[method-assign]
    began = await run_with_fault(agent, pings, 3.5)
    assert_pings_stopped(pings, began)
    failures = agent.metrics.task_failures.labels("uplink:parquet")._value.get()
    assert failures >= 1 if fault is crashing_after else failures == 0
