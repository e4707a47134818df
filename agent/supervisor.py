"""Keeping one source alive: run its driver, and when a session fails, back off and retry.

One SourceRunner per source, each in its own task, so a failing device never delays
another. The first failure of an outage is logged once with its cause, later retries are
only counted, and the first good sample after it logs "recovered". When a session fails,
one bad comm-error sample per tag marks where the gap starts in the data itself.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable

import numpy as np

from agent import quality as q
from agent.clock import SourceClock
from agent.frame import Frame
from agent.pipeline import SourcePipeline
from protocols.sdk import Driver, DriverContext

SESSION = "session"
_COMM_ERROR = q.make(q.BAD, q.Reason.COMM_ERROR)


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half fixed, half random.

    The random half spreads the reconnects of many gateways after a shared outage (a
    switch reboot) so they do not hit the devices in lockstep.
    """
    ceiling = min(max_s, initial_s * 2 ** min(attempt, 30))
    return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


def describe_error(error: BaseException) -> str:
    """The innermost cause, readable: TaskGroup wraps a session's failure in groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"


class SourceRunner:
    """Runs one source's driver with restart, and passes its frames into the agent."""

    def __init__(
        self,
        index: int,
        driver: Driver,
        sink: Callable[[int, Frame], Awaitable[None]],
        ctx_factory: Callable[[Callable[[Frame], Awaitable[None]]], DriverContext],
        rng: random.Random | None = None,
        acquired: Callable[[int, Frame], None] | None = None,
    ) -> None:
        self.index = index
        self.driver = driver
        self.config = driver.config
        self.ctx = ctx_factory(self.emit)
        self.clock = SourceClock(self.config, self.ctx.metrics, self.ctx.problems)
        self.pipeline = SourcePipeline(driver.config.tags, self._dropped)
        self.log = self.ctx.log
        self._sink = sink
        self._acquired = acquired
        self._rng = rng or random.Random()
        self._attempt = 0
        self._all_tags = np.arange(len(driver.config.tags), dtype=np.int32)
        self._points_in = self.ctx.metrics.points_in.labels(self.config.name)
        self._failures = self.ctx.metrics.reconnects.labels(self.config.name)
        self.points = 0
        self.failures = 0

    async def emit(self, frame: Frame) -> None:
        """The driver's sink: clock, counters and data-quality tally, pipeline, then the
        agent's queue (backpressure).

        Received samples and recovery are judged on what the driver delivered, bad samples
        on what the pipeline passes on (it flags some, and drops or compresses others).
        """
        frame = self.clock.process(frame)
        delivered = self._count_in(frame)
        if self._acquired is not None:
            self._acquired(self.index, frame)
        frame = self.pipeline.process(frame)
        self._count_bad(frame)
        if delivered and self.ctx.problems.ok(SESSION):
            self._attempt = 0
        await self._sink(self.index, frame)

    def _dropped(self, reason: str, n: int) -> None:
        if n:
            self.ctx.metrics.points_dropped.labels(self.config.name, reason).inc(n)

    def _count_in(self, frame: Frame) -> bool:
        """Count the samples received; True if the frame holds any sample that is not bad."""
        n = len(frame)
        self.points += n
        self._points_in.inc(n)
        return n > 0 and bool((frame.quality < q.BAD).any())

    def _count_bad(self, frame: Frame) -> None:
        """Count bad samples by reason."""
        bad = frame.quality >= q.BAD
        if not bad.any():
            return
        reasons, counts = np.unique(frame.quality[bad] & q.REASON_MASK, return_counts=True)
        for reason, count in zip(reasons.tolist(), counts.tolist(), strict=True):
            self.ctx.metrics.points_bad.labels(self.config.name, q.reason_name(reason)).inc(count)

    async def run(self) -> None:
        """Run sessions until cancelled; never raises anything but CancelledError."""
        while True:
            try:
                await self.driver.run(self.ctx)
                error = "the driver's run() returned"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any driver failure ends the session, not the agent
                error = describe_error(exc)
            await self._session_failed(error)

    async def _session_failed(self, error: str) -> None:
        self.failures += 1
        self._failures.inc()
        delay = backoff_delay(
            self._attempt,
            self.config.backoff_initial / 1e9,
            self.config.backoff_max / 1e9,
            self._rng,
        )
        self._attempt += 1
        if self.ctx.problems.fail(
            SESSION, "source failed", error=error, retry_in_s=round(delay, 2)
        ):
            marker = Frame.uniform(self._all_tags, time.time_ns(), math.nan, _COMM_ERROR)
            self._count_in(marker)
            marker = self.pipeline.process(marker)  # ends compressed trends at the gap
            self._count_bad(marker)
            await self._sink(self.index, marker)
        else:
            self.log.debug("source still failing", error=error, retry_in_s=round(delay, 2))
        await asyncio.sleep(delay)
