"""``edge-agent status`` and ``edge-agent reload`` against a running agent (issue 15).

The agent runs in the test's loop with its endpoint on a loopback port; each command runs
as plant IT would run it, a process of its own, and is judged by what it prints and its
exit status.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest

from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from tests.faults.outages import wait_for
from tests.test_reload import agent_file, agent_on, runner_of, seq_source

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def edge_agent(*args: str) -> tuple[int, str, str]:
    """Run ``edge-agent ARGS``; (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.commands.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def with_endpoint(config: Path, listen: str) -> None:
    config.write_text(config.read_text().replace('metrics = ""', f'metrics = "{listen}"'))


async def test_status_of_an_agent_with_a_healthy_and_a_failing_source(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there: every session fails
    async with ModbusPLCSimulator(seed=31) as plc:
        sources = plc.agent_config("100ms", source="healthy", points=POINTS[:3])
        sources += (
            f'[[sources]]\nname = "failing"\nprotocol = "modbus"\n'
            f'url = "modbus+tcp://127.0.0.1:{dead}"\nbackoff_initial = "200ms"\n'
            f'backoff_max = "500ms"\n{POINTS[0].toml("1s")}\n'
        )
        config = agent_file(tmp_path, sources)
        with_endpoint(config, "127.0.0.1:0")
        async with agent_on(config) as agent:
            failing = runner_of(agent, "failing")
            await wait_for(
                lambda: (
                    agent.status_port is not None
                    and runner_of(agent, "healthy").points > 60
                    and failing.failures >= 2
                    and agent.last_quality is not None
                ),
                15.0,
                "both sources at work",
            )
            url = f"http://127.0.0.1:{agent.status_port}"
            await asyncio.sleep(2.5)  # two rate samples a second apart for points/s
            shown = await edge_agent("status", "--url", url)
            as_json = await edge_agent("status", "--url", url, "--json")
    code, screen, _ = shown
    assert code == 1, "a source is down: exit 1"
    lines = screen.splitlines()
    healthy = next(line for line in lines if line.startswith("healthy "))
    down = next(line for line in lines if line.startswith("failing "))
    assert healthy.split()[1] == "up"
    assert down.split()[1] == "DOWN"
    assert (
        f"session failed: ConnectionError: cannot connect to modbus+tcp://127.0.0.1:{dead}" in down
    )
    assert "FAILING: source:failing" in lines[0]
    assert any(line.startswith("parquet ") and " up " in line for line in lines)
    assert any(line.startswith("spool: ") for line in lines)
    assert any(line.startswith("  healthy: received ") for line in lines), "last window"

    code, text, _ = as_json
    assert code == 1
    status = json.loads(text)
    by_name = {source["name"]: source for source in status["sources"]}
    assert by_name["healthy"]["state"] == "up"
    assert by_name["healthy"]["points_per_s"] > 0
    assert by_name["healthy"]["lateness_p99_ms"] is not None
    assert by_name["healthy"]["last_error"] is None
    assert by_name["failing"]["state"] == "down"
    assert by_name["failing"]["failures"] >= 2
    assert "cannot connect" in by_name["failing"]["last_error"]
    assert by_name["failing"]["points_per_s"] == 0
    assert status["uplinks"][0]["state"] == "up"
    assert status["uplinks"][0]["backlog"] >= 0
    assert status["quality"]["sources"]["healthy"]["completeness"] > 0
    assert status["agent"]["failed"] == ["source:failing"]

    code, _, error = await edge_agent("status", "--url", url)  # the agent has stopped
    assert code == 3, "unreachable: exit 3"
    assert f"no agent answers at {url}/status" in error


async def test_status_without_an_endpoint_says_so(tmp_path: Path) -> None:
    config = agent_file(tmp_path, seq_source("plc", 1))
    code, _, error = await edge_agent("status", "-c", str(config))
    assert code == 3
    assert 'agent.metrics is "": the agent has no endpoint to ask' in error


async def test_the_reload_command_answers_for_the_running_agent(tmp_path: Path) -> None:
    port = free_port()
    async with ModbusPLCSimulator(seed=32) as plc:
        config = agent_file(tmp_path, seq_source("plc", plc.port))
        with_endpoint(config, f"127.0.0.1:{port}")
        good = config.read_text()
        async with agent_on(config) as agent:
            await wait_for(lambda: agent.status_port == port, 10.0, "endpoint up")
            unchanged = await edge_agent("reload", "-c", str(config))
            config.write_text(good.replace('rate = "100ms"', 'rate = "200ms"'))
            applied = await edge_agent("reload", "-c", str(config))
            config.write_text(good.replace('type = "uint32"', 'type = "uint33"'))
            invalid = await edge_agent("reload", "-c", str(config))
            config.write_text(good.replace('gateway_id = "gw"', 'gateway_id = "gw2"'))
            refused = await edge_agent("reload", "-c", str(config))
            runner = agent.runners[0]
            assert runner.config.tags[0].rate == 200_000_000, "the applied reload stays"
        config.write_text(good)
        unreachable = await edge_agent("reload", "-c", str(config))
    assert unchanged[0] == 0
    assert "is unchanged" in unchanged[1]
    assert applied[0] == 0
    assert "reloaded" in applied[1]
    assert "sources restarted: plc" in applied[1]
    assert invalid[0] == 2
    assert "tags[0].type" in invalid[2], "the key path, from the local check"
    assert refused[0] == 1
    assert "agent.gateway_id: gw -> gw2" in refused[2]
    assert unreachable[0] == 3
