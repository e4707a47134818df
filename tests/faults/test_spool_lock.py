"""Two agents on one data_dir would write one frame log over each other: the second one
to start is refused with one line, and a status systemd retries (the first may be on its
way out)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from simulators.modbus_plc import ModbusPLCSimulator
from tests.faults.harness import agent_processes, sequence_source

EXIT_IO = 74


async def test_a_second_agent_on_the_same_data_dir_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    async with ModbusPLCSimulator(seed=11) as plc, agent_processes() as start_agent:
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nmetrics = ""\ndata_dir = "{tmp_path / "state"}"\nlog_format = "json"\n'
            f'[[uplinks]]\ntype = "parquet"\npath = "{tmp_path / "store"}"\n\n'
            + sequence_source(plc.port)
        )
        first = await start_agent(config)
        await asyncio.sleep(2.0)
        second = await start_agent(config)
        _, stderr = await asyncio.wait_for(second.communicate(), 30)
        first.send_signal(signal.SIGTERM)
        await asyncio.wait_for(first.communicate(), 30)
        assert first.returncode == 0
    lines = stderr.decode().strip().splitlines()
    assert second.returncode == EXIT_IO
    assert b"Traceback" not in stderr
    assert "another agent running on this data_dir" in lines[-1]
    assert len([line for line in lines if '"level": "error"' in line]) == 1
