"""Absolute-tick scheduling for polls.

Tick k of a group with period P is due at ``start + k*P`` on the monotonic clock, never
after ``sleep(P)``: sleeping a period after each poll adds the poll's duration every time
and the grid drifts. Ticks are phased so that they fall on wall-clock multiples of P (a
100 ms group polls at .000, .100, .200 ...), which makes every gateway sample on the same
grid and lets snapping land on round timestamps.

When a poll overruns, ticks whose time has passed are skipped (and counted) except the
most recent one, which runs at once: a slow device gets fewer polls, not a growing queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tick:
    """One scheduled poll: its index on the grid, its due times and how late it started."""

    index: int
    due_wall_ns: int  # the grid instant this poll stands for (UTC ns)
    due_mono_ns: int
    lateness_ns: int
    skipped: int  # ticks dropped just before this one because of an overrun


class TickClock:
    """The two clocks the scheduler reads; replaced by tests that need a fake clock."""

    def __init__(
        self,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.wall_ns = wall_ns
        self.mono_ns = mono_ns

    async def sleep_until(self, mono_ns: int) -> None:
        delay = (mono_ns - self.mono_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)


def next_index(last_index: int, now_offset_ns: int, period_ns: int) -> int:
    """Index of the tick to run after ``last_index``, given the time elapsed since tick 0.

    The next tick is ``last_index + 1`` unless later ticks are already due, in which case
    it is the most recent due one, and the ticks in between are skipped.
    """
    latest_due = now_offset_ns // period_ns
    return max(last_index + 1, latest_due)


async def ticks(period_ns: int, clock: TickClock | None = None) -> AsyncIterator[Tick]:
    """Yield ticks forever on the absolute grid of ``period_ns``; the caller polls per tick."""
    clock = clock or TickClock()
    wall0 = clock.wall_ns()
    mono0 = clock.mono_ns()
    first = wall0 // period_ns + 1  # first grid instant strictly after now
    base_mono = mono0 + (first * period_ns - wall0)  # monotonic time of tick index 0
    index = 0
    skipped = 0
    while True:
        due_mono = base_mono + index * period_ns
        await clock.sleep_until(due_mono)
        now = clock.mono_ns()
        yield Tick(
            index=index,
            due_wall_ns=(first + index) * period_ns,
            due_mono_ns=due_mono,
            lateness_ns=max(0, now - due_mono),
            skipped=skipped,
        )
        following = next_index(index, clock.mono_ns() - base_mono, period_ns)
        skipped = following - index - 1
        index = following
