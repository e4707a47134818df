"""PollingDriver stops when cancelled, even when a library swallows the cancellation."""

from __future__ import annotations

import asyncio

import numpy as np

from agent.acquisition import quality as q
from agent.ops.metrics import PollStats
from protocols._template.driver import TemplateDriver, TemplateSourceConfig
from protocols.sdk import DriverContext, Frame, PollGroup, Tick


class SwallowingDriver(TemplateDriver):
    """Reads like a client whose request wrapper eats a cancel that lands at the wrong time."""

    reading = asyncio.Event()
    swallowed = False

    async def read(self, group: PollGroup, tick: Tick, stats: PollStats) -> Frame:
        self.reading.set()
        try:
            await asyncio.sleep(0.03)
        except asyncio.CancelledError:
            if self.swallowed:  # once is the race; a second cancel lets a failed test end
                raise
            self.swallowed = True  # what asyncio.wait_for does on 3.11 when the result is ready
        n = group.tags.shape[0]
        return Frame(
            group.tags,
            np.full(n, tick.due_wall_ns, np.int64),
            np.zeros(n),
            np.full(n, q.GOOD, np.uint16),
        )


async def test_a_swallowed_cancellation_still_stops_the_poll_loop() -> None:
    config = TemplateSourceConfig(
        name="s",
        tags=[{"name": "t", "rate": "50ms"}],  # type: ignore[list-item]
    )
    frames: list[Frame] = []

    async def sink(frame: Frame) -> None:
        frames.append(frame)

    driver = SwallowingDriver(config)
    task = asyncio.create_task(driver.run(DriverContext(config, sink)))
    await asyncio.sleep(0.2)
    driver.reading.clear()
    await driver.reading.wait()
    task.cancel()  # once, while a read is in flight, as a shutdown would
    done, _ = await asyncio.wait({task}, timeout=1.0)
    assert done, "the poll loop kept running after cancellation"
    assert task.cancelled()
    assert frames


class HeldDriver(TemplateDriver):
    """A device whose answers wait until the test lets them go."""

    def __init__(self, config: TemplateSourceConfig) -> None:
        super().__init__(config)
        self.answer = asyncio.Event()
        self.asked = asyncio.Event()

    async def read(self, group: PollGroup, tick: Tick, stats: PollStats) -> Frame:
        self.asked.set()
        await self.answer.wait()
        n = group.tags.shape[0]
        return Frame(
            group.tags,
            np.full(n, tick.due_wall_ns, np.int64),
            np.zeros(n),
            np.full(n, q.GOOD, np.uint16),
        )


async def test_a_reload_can_wait_for_the_poll_in_flight_to_reach_its_emit() -> None:
    config = TemplateSourceConfig(
        name="s",
        tags=[{"name": "t", "rate": "50ms"}],  # type: ignore[list-item]
    )
    emitted: list[Frame] = []

    async def sink(frame: Frame) -> None:
        emitted.append(frame)

    driver = HeldDriver(config)
    ctx = DriverContext(config, sink)
    task = asyncio.create_task(driver.run(ctx))
    await driver.asked.wait()  # a request is out and its answer held back
    assert not await ctx.between_polls(0.1), "not between polls while a request is out"
    waiting = asyncio.create_task(ctx.between_polls(5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    driver.answer.set()
    assert await waiting, "between polls once the answer was emitted"
    assert emitted, "and that poll's frame reached the sink first"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
