"""Absolute-tick scheduling: the grid, lateness, overrun skipping, with a fake and a real clock."""

from __future__ import annotations

import asyncio
import math
import random
import time
from contextlib import aclosing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.acquisition.scheduler import Tick, TickClock, next_index, ticks

MS = 1_000_000
S = 1_000_000_000
P = 100 * MS
WALL0 = 1_700_000_000 * S + 123_456_789  # not on any grid instant
MONO0 = 5_000 * S


class FakeClock(TickClock):
    """Time stands still until someone sleeps or works; sleeping returns at once."""

    def __init__(self, wall: int = WALL0, mono: int = MONO0, wake_delay: int = 0) -> None:
        self.now = mono
        self.offset = wall - mono
        self.wake_delay = wake_delay
        self.sleeps: list[int] = []
        super().__init__(wall_ns=self.wall_ns, mono_ns=self.mono_ns)

    def mono_ns(self) -> int:  # type: ignore[override]
        return self.now

    def wall_ns(self) -> int:  # type: ignore[override]
        return self.now + self.offset

    async def sleep_until(self, mono_ns: int) -> None:
        self.sleeps.append(mono_ns)
        if mono_ns > self.now:
            self.now = mono_ns + self.wake_delay

    def work(self, ns: int) -> None:
        self.now += ns


async def take(count: int, clock: FakeClock, period: int = P, work: int = 0) -> list[Tick]:
    """``count`` ticks, the consumer spending ``work`` ns of clock time on each."""
    got: list[Tick] = []
    async with aclosing(ticks(period, clock)) as stream:
        async for tick in stream:
            got.append(tick)
            if len(got) == count:
                break
            clock.work(work)
    return got


# --- next_index ---------------------------------------------------------------------------


def test_next_index_without_overrun_is_the_next_tick() -> None:
    assert next_index(0, 0, P) == 1
    assert next_index(5, 5 * P + P // 2, P) == 6
    assert next_index(5, 6 * P - 1, P) == 6
    assert next_index(5, 6 * P, P) == 6  # exactly due: still just the next one
    assert next_index(5, 2 * P, P) == 6  # ahead of the grid (never goes backwards)


def test_next_index_overrun_runs_the_most_recent_due_tick() -> None:
    # Tick 5 ran at 5P and the poll took 3.5 periods: ticks 6 and 7 are skipped, 8 runs.
    following = next_index(5, 5 * P + 7 * P // 2, P)
    assert following == 8
    assert following - 5 - 1 == 2  # skipped
    assert next_index(5, 7 * P, P) == 7  # overrun by 2 periods: one skipped
    assert next_index(0, 100 * P - 1, P) == 99


@given(
    last=st.integers(min_value=0, max_value=10**6),
    elapsed=st.integers(min_value=0, max_value=10**9),
    period=st.integers(min_value=1, max_value=10**7),
)
def test_next_index_properties(last: int, elapsed: int, period: int) -> None:
    now = last * period + elapsed
    following = next_index(last, now, period)
    assert following >= last + 1
    if following > last + 1:  # skipping: the chosen tick is the latest one already due
        assert following * period <= now < (following + 1) * period
    else:  # not skipping: the next tick was not already overtaken by a later one
        assert now < (last + 2) * period


# --- ticks with a fake clock --------------------------------------------------------------


async def test_ticks_land_on_wall_clock_multiples() -> None:
    clock = FakeClock()
    got = await take(25, clock)
    assert [t.index for t in got] == list(range(25))
    first = (WALL0 // P + 1) * P
    assert got[0].due_wall_ns == first
    assert first > WALL0
    for tick in got:
        assert tick.due_wall_ns % P == 0
        assert tick.due_wall_ns == first + tick.index * P
        # Monotonic and wall due times describe the same instant.
        assert tick.due_mono_ns - MONO0 == tick.due_wall_ns - WALL0
        assert tick.lateness_ns == 0
        assert tick.skipped == 0
    assert clock.sleeps[:3] == [got[0].due_mono_ns, got[1].due_mono_ns, got[2].due_mono_ns]


@pytest.mark.parametrize("period", [P, S, 7 * MS, 60 * S])
async def test_first_tick_is_the_next_grid_instant(period: int) -> None:
    grid = math.lcm(P, S, 7 * MS, 60 * S)
    on_grid = 1_700_000_000 * S // grid * grid  # a multiple of every period used here
    got = await take(3, FakeClock(wall=on_grid), period=period)
    assert got[0].due_wall_ns == on_grid + period  # strictly after "now"
    got = await take(3, FakeClock(wall=on_grid + 1), period=period)
    assert got[0].due_wall_ns == on_grid + period
    got = await take(3, FakeClock(wall=on_grid - 1), period=period)
    assert got[0].due_wall_ns == on_grid
    assert all(t.due_wall_ns % period == 0 for t in got)


async def test_lateness_is_measured_and_does_not_accumulate() -> None:
    clock = FakeClock(wake_delay=3 * MS)  # the event loop wakes us 3 ms late every time
    got = await take(50, clock, work=20 * MS)
    assert [t.lateness_ns for t in got] == [3 * MS] * 50
    # The grid does not drift by wake-up delay plus work: tick k is still due at k periods.
    assert [t.due_mono_ns - got[0].due_mono_ns for t in got] == [k * P for k in range(50)]
    assert all(t.skipped == 0 for t in got)


async def test_slow_consumer_skips_ticks_and_counts_them() -> None:
    clock = FakeClock()
    got = await take(6, clock, work=7 * P // 2)  # every poll takes 3.5 periods
    assert [t.index for t in got] == [0, 3, 7, 10, 14, 17]
    assert [t.skipped for t in got] == [0, 2, 3, 2, 3, 2]
    assert [t.lateness_ns for t in got] == [0, P // 2, 0, P // 2, 0, P // 2]
    first = got[0].due_wall_ns
    for tick in got:
        assert tick.due_wall_ns == first + tick.index * P
        assert tick.due_wall_ns % P == 0


async def test_random_work_accounts_for_every_grid_slot() -> None:
    rng = random.Random(42)
    clock = FakeClock(wake_delay=0)
    got: list[Tick] = []
    async with aclosing(ticks(P, clock)) as stream:
        async for tick in stream:
            now = clock.mono_ns()
            assert tick.lateness_ns == max(0, now - tick.due_mono_ns)
            got.append(tick)
            if len(got) == 300:
                break
            clock.work(rng.choice([0, 10 * MS, 90 * MS, 150 * MS, 420 * MS]))
    previous = -1
    for tick in got:
        assert tick.index > previous
        assert tick.skipped == tick.index - previous - 1
        assert 0 <= tick.lateness_ns < P  # runs the most recent due tick, so less than a period
        assert tick.due_wall_ns % P == 0
        previous = tick.index
    assert sum(t.skipped for t in got) + len(got) == got[-1].index + 1
    assert sum(t.skipped for t in got) > 0


async def test_default_clock_reads_real_time() -> None:
    clock = TickClock()
    assert abs(clock.wall_ns() - time.time_ns()) < S
    assert abs(clock.mono_ns() - time.monotonic_ns()) < S
    started = time.monotonic_ns()
    await clock.sleep_until(started + 20 * MS)
    assert time.monotonic_ns() - started >= 19 * MS
    before = time.monotonic_ns()
    await clock.sleep_until(before - S)  # in the past: returns at once
    assert time.monotonic_ns() - before < 50 * MS


# --- real time ----------------------------------------------------------------------------


async def test_real_time_100ms_ticks_for_one_second() -> None:
    got: list[tuple[Tick, int]] = []
    started = time.monotonic_ns()
    async with aclosing(ticks(P)) as stream:
        async for tick in stream:
            got.append((tick, time.time_ns()))
            if time.monotonic_ns() - started >= S - P // 2:
                break
    assert 9 <= len(got) <= 11
    assert [t.index for t, _ in got] == list(range(len(got)))
    for tick, wall in got:
        assert tick.due_wall_ns % P == 0
        assert tick.skipped == 0
        assert tick.lateness_ns < 30 * MS
        # The poll starts close to its wall-clock grid instant.
        assert -5 * MS < wall - tick.due_wall_ns < 40 * MS
    median = sorted(t.lateness_ns for t, _ in got)[len(got) // 2]
    assert median < 10 * MS


async def test_real_time_ticks_survive_a_slow_consumer() -> None:
    got: list[Tick] = []
    async with aclosing(ticks(20 * MS)) as stream:
        async for tick in stream:
            got.append(tick)
            if len(got) == 3:
                break
            await asyncio.sleep(0.065)  # 3.25 periods of blocking work
    assert got[0].skipped == 0
    assert all(2 <= t.skipped <= 4 for t in got[1:]), [t.skipped for t in got]
    assert all(t.lateness_ns < 20 * MS for t in got)
