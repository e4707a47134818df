"""Source health: a session that stays up while every read fails is degraded, not healthy.

Against a real agent, the Modbus simulator answers every request with an exception
(``exception_rate = 1.0``) and then, set back to 0 while it runs, answers again; the
rules themselves (mixed frames, quiet on-change sources, the threshold) are checked on a
SourceRunner fed frames directly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import structlog

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.acquisition.supervisor import MIN_DEGRADED_AFTER_S, SourceRunner, degraded_after_s
from agent.ops.metrics import Metrics
from protocols.modbus.config import ModbusSourceConfig
from protocols.modbus.driver import ModbusDriver
from protocols.sdk import DriverContext
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from simulators.mqtt_broker import PrivateBroker
from tests.conftest import agent_toml
from tests.faults.outages import mqtt_level_source, running_agent, wait_for

S = 1_000_000_000
EXCEPTION = q.make(q.BAD, q.Reason.DEVICE_EXCEPTION)


async def test_a_plc_answering_only_exceptions_is_degraded_then_healthy_again(
    tmp_path: Path,
) -> None:
    plc = ModbusPLCSimulator(seed=21, exception_rate=1.0)
    await plc.start("127.0.0.1", 0)
    sources = plc.agent_config("100ms", points=POINTS[:2])
    try:
        with structlog.testing.capture_logs() as logs:
            async with running_agent(agent_toml(tmp_path / "store", sources)) as agent:
                runner = agent.runners[0]
                await wait_for(lambda: runner.points >= 5, 10.0, "first (bad) samples")
                assert runner.problem() is None, "not degraded before the threshold"
                took = await wait_for(
                    lambda: (runner.problem() or "").startswith("degraded"), 15.0, "degraded"
                )
                assert took > MIN_DEGRADED_AFTER_S - 2.0, "not before ~5 s of bad samples"
                assert "(device_exception)" in (runner.problem() or "")
                assert plc.exceptions > 20, "reads were made, and failed"
                plc.exception_rate = 0.0
                await wait_for(lambda: runner.problem() is None, 5.0, "healthy again")
                assert runner.degradations == 1
    finally:
        await plc.stop()
    degraded = [e for e in logs if e["event"] == "source degraded: only bad samples"]
    assert len(degraded) == 1, "logged once, not per poll"
    assert degraded[0]["reason"] == "device_exception"
    assert [e for e in logs if e["event"] == "recovered" and e["problem"] == "degraded"]


async def test_a_quiet_on_change_source_is_healthy_once_its_session_is_back(
    tmp_path: Path, mqtt_broker: PrivateBroker
) -> None:
    source = mqtt_level_source(mqtt_broker)
    async with running_agent(agent_toml(tmp_path / "store", source)) as agent:
        runner = agent.runners[0]
        await wait_for(lambda: runner.ctx.connected, 10.0, "connected")
        assert runner.problem() is None
        await mqtt_broker.stop()
        await wait_for(lambda: runner.problem() is not None, 10.0, "the outage noticed")
        assert (runner.problem() or "").startswith("session failed: ")
        await mqtt_broker.start()
        await wait_for(lambda: runner.ctx.connected, 10.0, "reconnected")
        assert runner.problem() is None, "nothing published: quiet, not failed"


def _runner(rate: str = "100ms") -> tuple[SourceRunner, list[Frame]]:
    """A runner of a Modbus source that is never run: frames go in through ``emit``."""
    config = ModbusSourceConfig(
        name="plc",
        url="modbus+tcp://127.0.0.1:1",
        tags=[{"name": "a", "address": "hr:0", "rate": rate}, {"name": "b", "address": "hr:1"}],
    )
    out: list[Frame] = []

    async def sink(index: int, frame: Frame) -> None:
        out.append(frame)

    runner = SourceRunner(
        0, ModbusDriver(config), sink, lambda emit: DriverContext(config, emit, Metrics())
    )
    return runner, out


def _frame(quality: list[int]) -> Frame:
    n = len(quality)
    return Frame(
        np.arange(n, dtype=np.int32) % 2,
        np.full(n, time.time_ns(), np.int64),
        np.where(np.array(quality) >= q.BAD, np.nan, 1.0),
        np.array(quality, np.uint16),
        time.time_ns(),
    )


async def test_a_frame_with_one_good_sample_keeps_the_source_healthy() -> None:
    runner, _ = _runner()
    runner.degraded_after_s = 0.05
    for _ in range(5):
        await runner.emit(_frame([EXCEPTION, q.GOOD]))
        await asyncio.sleep(0.02)
    assert runner.problem() is None
    await runner.emit(_frame([EXCEPTION, EXCEPTION]))
    await asyncio.sleep(0.06)
    await runner.emit(_frame([EXCEPTION, EXCEPTION]))
    assert runner.problem() is not None
    await runner.emit(_frame([q.make(q.UNCERTAIN, q.Reason.SOURCE_STATUS), EXCEPTION]))
    assert runner.problem() is None, "an uncertain sample is not a bad one"


async def test_a_quiet_source_is_not_degraded() -> None:
    """On-change sources (a subscription, a publisher) may say nothing for long."""
    runner, _ = _runner()
    runner.degraded_after_s = 0.05
    await runner.emit(_frame([q.GOOD, q.GOOD]))
    await asyncio.sleep(0.1)
    assert runner.problem() is None


def test_the_threshold_is_three_slowest_periods_and_at_least_5s() -> None:
    assert degraded_after_s([100_000_000, 1 * S]) == MIN_DEGRADED_AFTER_S
    assert degraded_after_s([100_000_000, 10 * S]) == 30.0
    runner, _ = _runner("4s")
    assert runner.degraded_after_s == 12.0
