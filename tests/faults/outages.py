"""Helpers of the fault tests (and of a bench running them longer): a running agent, an
outage length taken from the environment, waiting on conditions, and reading resumption
off the store.

``EDGE_AGENT_OUTAGE_S`` (default 10) sets how long the recovery tests keep a device, a
server or the broker away; each such test prints one ``recovery:`` line with the measured
time from the peer's return to the first good sample (or the collector's new session), so
a bench can run ``pytest -s tests/faults/test_source_recovery.py`` with 60 and read them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from agent.acquisition import quality as q
from simulators.mqtt_broker import PrivateBroker
from tests.conftest import running_agent as running_agent

OUTAGE_S = float(os.environ.get("EDGE_AGENT_OUTAGE_S", "10"))
RESUME_WITHIN_S = 5.0  # the goal, with default settings


async def wait_for(
    condition: Callable[[], bool], seconds: float, what: str | Callable[[], str]
) -> float:
    """Poll ``condition`` every 20 ms; the seconds it took, or fail the test naming ``what``
    (a callable tells the state it ended in)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > seconds:
            pytest.fail(f"{what() if callable(what) else what}: not within {seconds} s")
        await asyncio.sleep(0.02)
    return loop.time() - start


def first_good_after(table: pa.Table, tag: str, after_ns: int) -> float:
    """Seconds from ``after_ns`` to the first good sample of ``tag`` stamped later, or inf."""
    rows = table.filter(pc.equal(table["tag"].cast(pa.string()), tag))
    times = rows["time"].cast(pa.int64()).to_numpy()
    good = (rows["quality"].to_numpy() & q.SEVERITY_MASK) == q.GOOD
    later = times[good & (times > after_ns)]
    return float((later.min() - after_ns) / 1e9) if later.size else float("inf")


def mqtt_level_source(broker: PrivateBroker) -> str:
    """An MQTT source of one tag, ``level``, on ``plant/level`` of the broker."""
    return (
        f'[[sources]]\nname = "scada"\nprotocol = "mqtt"\nurl = "{broker.url}"\n'
        f'mqtt_version = "{broker.mqtt_version()}"\ntopic = "plant/{{tag}}"\n'
        '[[sources.tags]]\nname = "level"\n'
    )


def report(kind: str, resumed_s: float) -> None:
    """The line a bench greps for."""
    print(f"\nrecovery: {kind} outage {OUTAGE_S:.0f} s, resumed {resumed_s:.2f} s after its return")
