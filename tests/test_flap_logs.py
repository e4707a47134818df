"""A flaky PLC in the log (issue 15): the issue's own run, ``edge-agent simulate modbus
--exception-rate 0.05 --disconnect-every 4`` read with ``examples/modbus-sim.toml`` for
12 s, gave 30 lines, a failed/recovered pair per hiccup, and ``detail: "4"``.

Now each problem (a block read, the session) logs its first failure, then a count now
and then while it keeps coming back, and "recovered" once it has stayed away: the lines
are counted here, and the failures the "recovered" lines add up to are checked against
the bad samples the agent stored for them.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent.config.load import parse_config
from agent.runtime import Agent
from protocols.modbus.driver import ModbusDriver
from simulators.modbus_plc import ModbusPLCSimulator
from tests.faults.outages import wait_for

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parent.parent / "examples" / "modbus-sim.toml"


def example_config(tmp_path: Path, port: int) -> str:
    text = EXAMPLE.read_text()
    for old, new in (
        ("127.0.0.1:5020", f"127.0.0.1:{port}"),
        ('"./edge-agent-data"', f'"{tmp_path / "state"}"'),
        ('"./edge-data"', f'"{tmp_path / "store"}"'),
        ('"127.0.0.1:9464"', '""'),
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text


def bad_points(agent: Agent, reason: str) -> float:
    value = agent.metrics.registry.get_sample_value(
        "edge_agent_points_bad_total", {"source": "plc1", "reason": reason}
    )
    return value or 0.0


async def test_a_flapping_plc_logs_each_problem_once_a_count_and_its_recovery(
    tmp_path: Path,
) -> None:
    plc = ModbusPLCSimulator(seed=41, exception_rate=0.05, disconnect_every_s=4.0)
    port = await plc.start("127.0.0.1", 0)
    agent = Agent(parse_config(tomllib.loads(example_config(tmp_path, port)), EXAMPLE))
    stop = asyncio.Event()
    try:
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(agent.run(stop))
            await asyncio.sleep(12.0)  # the run
            flapping = [e for e in logs if e.get("source") == "plc1"]
            plc.exception_rate, plc.disconnect_every_s = 0.0, 0.0  # the PLC is mended
            runner = agent.runners[0]
            await wait_for(
                lambda: _all_recovered(logs),
                30.0,
                lambda: f"every problem told recovered: {_open(logs)}",
            )
            stop.set()
            await asyncio.wait_for(task, 30)
    finally:
        await plc.stop()

    problems = [e for e in flapping if e["event"] != "source connected"]
    keys = {e["problem"] for e in problems}
    assert plc.exceptions >= 5, "the PLC did flap"
    assert runner.failures >= 2, "and dropped the connection"
    assert len(problems) <= 2 * len(keys), f"{len(problems)} lines for {len(keys)} problems"
    assert len(problems) < 15, "not 30"
    failures = [e for e in problems if e["event"].startswith("modbus read failed: device")]
    assert failures, problems
    assert {e["detail"] for e in failures} == {"SERVER DEVICE FAILURE (4)"}, "by name"

    told = [e for e in logs if e.get("source") == "plc1" and e["event"] == "recovered"]
    occurrences: Counter[str] = Counter()
    for entry in told:
        occurrences[entry["problem"]] += entry["occurrences"]
    assert occurrences["session"] == runner.failures, "every failed session counted"
    assert any(entry.get("outages", 1) > 1 for entry in told), "a flapping episode's total"
    tags_per_block = _tags_per_block(runner.driver)
    read_failures = sum(
        n * tags_per_block[key] for key, n in occurrences.items() if key in tags_per_block
    )
    stored_bad = sum(bad_points(agent, r) for r in ("device_exception", "timeout", "decode_error"))
    assert read_failures == stored_bad, "the recovered lines add up to the bad samples"


def _last_lines(logs: list[dict[str, Any]]) -> dict[str, str]:
    """Each problem's last line."""
    last: dict[str, str] = {}
    for entry in logs:
        if entry.get("source") == "plc1" and "problem" in entry:
            last[entry["problem"]] = entry["event"]
    return last


def _all_recovered(logs: list[dict[str, Any]]) -> bool:
    """Each problem's last line is "recovered" (none failing, none settling)."""
    last = _last_lines(logs)
    return bool(last) and all(event == "recovered" for event in last.values())


def _open(logs: list[dict[str, Any]]) -> dict[str, str]:
    """The problems not told recovered, with their last lines."""
    return {key: event for key, event in _last_lines(logs).items() if event != "recovered"}


def _tags_per_block(driver: Any) -> dict[str, int]:
    assert isinstance(driver, ModbusDriver)
    return {
        key: int(block.tags.shape[0])
        for plan in driver.plans.values()
        for block, key in zip(plan.blocks, plan.keys, strict=True)
    }
