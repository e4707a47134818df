"""Keeping one source alive: run its driver, and when a session fails, back off and retry.

One SourceRunner per source, each in its own task, so a failing device never delays
another. The first failure of an outage is logged once with its cause, later retries are
only counted, and the first sample after it logs "recovered". When a session fails,
one bad comm-error sample per tag marks where the gap starts in the data itself. The
backoff between sessions ends early once the driver's endpoint accepts connections again
(``agent.acquisition.backoff``), so a returning device is read again within about a second.

A session can also stay up while every read fails (a PLC answering each request with an
exception): when nothing but bad samples has arrived for ``degraded_after_s``, the source
is degraded, logged once, and healthy again with its next good sample. ``problem()`` says
which, for health checks. Non-finite values from any driver are made bad samples
(``not_finite``) here, before the pipeline, so no stage ever computes with an infinity.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable

import numpy as np

from agent.acquisition import quality as q
from agent.acquisition.backoff import Backoff
from agent.acquisition.backoff import (
    backoff_delay as backoff_delay,  # re-exported for agent.store.forwarder
)
from agent.acquisition.clock import SourceClock
from agent.acquisition.frame import Frame
from agent.acquisition.pipeline import SourcePipeline
from protocols.sdk import Driver, DriverContext

SESSION = "session"
DEGRADED = "degraded"
NOT_FINITE = "not_finite"
MIN_DEGRADED_AFTER_S = 5.0
NOT_FINITE_QUIET_S = 60.0  # without a non-finite value for this long, that problem is over
_COMM_ERROR = q.make(q.BAD, q.Reason.COMM_ERROR)
_NOT_FINITE = q.make(q.BAD, q.Reason.NOT_FINITE)


def describe_error(error: BaseException) -> str:
    """The innermost cause, readable: TaskGroup wraps a session's failure in groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"


def mark_not_finite(frame: Frame) -> int:
    """Make the good and uncertain numeric samples whose value is NaN or infinite bad
    (``not_finite``, value NaN, flags kept); returns how many.

    The frame gets new value and quality columns rather than writes into the driver's,
    which may share them between polls. Text samples carry NaN in the value column by
    design and keep their quality. One ``isfinite`` pass over a frame whose values are
    all finite; the rest only runs when one is not.
    """
    suspect = ~np.isfinite(frame.value)
    if not suspect.any():
        return 0
    suspect &= frame.quality < q.BAD
    if frame.text is not None:
        suspect &= frame.text == None  # noqa: E711  (elementwise over the object column)
    n = int(suspect.sum())
    if n:
        frame.value = np.where(suspect, math.nan, frame.value)
        frame.quality = np.where(
            suspect, (frame.quality & q.FLAG_MASK) | _NOT_FINITE, frame.quality
        ).astype(frame.quality.dtype)
    return n


def degraded_after_s(config_rates_ns: list[int]) -> float:
    """How long a source may deliver only bad samples before it is degraded: three
    periods of its slowest tag (a slow tag's failed read must be seen more than once),
    and never less than MIN_DEGRADED_AFTER_S (a blip of a fast source is not a fault)."""
    return max(3 * max(config_rates_ns) / 1e9, MIN_DEGRADED_AFTER_S)


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
        driver.prepare(self.ctx)
        self.clock = SourceClock(self.config, self.ctx.metrics, self.ctx.problems)
        self.pipeline = SourcePipeline(driver.config.tags, self._dropped)
        self.log = self.ctx.log
        self._sink = sink
        self._acquired = acquired
        self.backoff = Backoff(
            self.config.backoff_initial / 1e9,
            self.config.backoff_max / 1e9,
            self.config.probe_interval / 1e9,
            rng,
        )
        self._probe_address = driver.probe_address()
        self._all_tags = np.arange(len(driver.config.tags), dtype=np.int32)
        self._points_in = self.ctx.metrics.points_in.labels(self.config.name)
        self._failures = self.ctx.metrics.reconnects.labels(self.config.name)
        self.degraded_after_s = degraded_after_s([tag.rate for tag in self.config.tags])
        self._bad_since: float | None = None  # monotonic s of the first bad sample in a row
        self._bad_reason = ""
        self._error = ""  # why the last session failed
        self.error_at_ns = 0  # when (wall clock)
        self.points = 0
        self.failures = 0
        self.degradations = 0  # times the source became degraded
        self.not_finite = 0  # samples made bad for a NaN or infinite value
        self._not_finite_at = 0.0  # monotonic s of the last one

    def problem(self) -> str | None:
        """None while the source is healthy, else what is wrong, in a few words.

        A session that is up again is healthy before its first sample: an on-change
        source (a subscription, a publisher) may stay quiet for long."""
        if self.ctx.problems.is_open(SESSION) and not self.ctx.connected:
            return f"session failed: {self._error}"
        if self.ctx.problems.is_open(DEGRADED) and self._bad_since is not None:
            lasted = time.monotonic() - self._bad_since
            return f"degraded: no good sample for {lasted:.1f} s ({self._bad_reason})"
        return None

    async def emit(self, frame: Frame) -> None:
        """The driver's sink: values checked, clock, counters, health and data-quality
        tally, pipeline, then the agent's sink (frame log and batcher; it waits while
        acquisition is paused).

        Received samples, health and recovery are judged on what the driver delivered, bad
        samples counted on what the pipeline passes on (it flags some, and drops or
        compresses others).
        """
        self._check_values(frame)
        frame = self.clock.process(frame)
        delivered = self._count_in(frame)
        if len(frame):
            self._judge(frame, delivered)
        if self._acquired is not None:
            self._acquired(self.index, frame)
        frame = self.pipeline.process(frame)
        self._count_bad(frame)
        await self._sink(self.index, frame)

    def _check_values(self, frame: Frame) -> None:
        """Non-finite values made bad, counted, and logged once until they stop for a while
        (an intermittent NaN must not log every other poll)."""
        n = mark_not_finite(frame)
        if n:
            self.not_finite += n
            self._not_finite_at = time.monotonic()
            self.ctx.problems.fail(NOT_FINITE, "non-finite values stored as bad", samples=n)
        elif self._not_finite_at and time.monotonic() - self._not_finite_at > NOT_FINITE_QUIET_S:
            self._not_finite_at = 0.0
            self.ctx.problems.ok(NOT_FINITE)

    def _judge(self, frame: Frame, delivered: bool) -> None:
        """Health from a frame of the driver's: any sample shows the session is up, a good
        one that the source works; only bad ones for too long, that it is degraded."""
        self.ctx.problems.ok(SESSION)
        if delivered:
            self.backoff.reset()
            self._bad_since = None
            self.ctx.problems.ok(DEGRADED)
            return
        now = time.monotonic()
        if self._bad_since is None:
            self._bad_since = now
        elif now - self._bad_since > self.degraded_after_s and not self.ctx.problems.is_open(
            DEGRADED
        ):
            reasons = np.bincount(frame.quality & q.REASON_MASK, minlength=1)
            self._bad_reason = q.reason_name(int(reasons.argmax()))
            self.degradations += 1
            self.ctx.problems.fail(
                DEGRADED,
                "source degraded: only bad samples",
                reason=self._bad_reason,
                for_s=round(now - self._bad_since, 1),
            )

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

    @property
    def last_error(self) -> str:
        """Why the last session failed ("" if none has)."""
        return self._error

    def take_over(self, old: SourceRunner) -> None:
        """Go on where ``old`` (the same source before a reload) left off: its counters,
        and its clock models while the endpoint and the model's window are the same (the
        device's clock did not change with the config)."""
        self.points, self.failures = old.points, old.failures
        self.degradations, self.not_finite = old.degradations, old.not_finite
        self._error, self.error_at_ns = old._error, old.error_at_ns
        same_device = old.driver.probe_address() == self.driver.probe_address()
        if same_device and old.config.clock_window == self.config.clock_window:
            self.clock.model, self.clock.server = old.clock.model, old.clock.server

    async def run(self) -> None:
        """Run sessions until cancelled; never raises anything but CancelledError."""
        try:
            while True:
                try:
                    await self.driver.run(self.ctx)
                    error = "the driver's run() returned"
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any driver failure ends the session, not the agent
                    error = describe_error(exc)
                await self._session_failed(error)
        finally:
            self.ctx.problems.close()

    async def _session_failed(self, error: str) -> None:
        self.failures += 1
        self._failures.inc()
        self._error = error
        self.error_at_ns = time.time_ns()
        delay = self.backoff.next_delay()
        if self.ctx.problems.fail(
            SESSION, "source failed", error=error, retry_in_s=round(delay, 2)
        ):
            marker = Frame.uniform(self._all_tags, time.time_ns(), math.nan, _COMM_ERROR)
            self._count_in(marker)
            if self._acquired is not None:  # the tally: owed from here, none received
                self._acquired(self.index, marker)
            marker = self.pipeline.process(marker)  # ends compressed trends at the gap
            self._count_bad(marker)
            await self._sink(self.index, marker)
        else:
            self.log.debug("source still failing", error=error, retry_in_s=round(delay, 2))
        if await self.backoff.wait(delay, self._probe_address):
            self.log.debug("endpoint accepts again: retrying now", address=self._probe_address)
