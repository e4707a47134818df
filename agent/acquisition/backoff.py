"""Reconnect backoff that ends as soon as the peer is back.

An exponential backoff protects a struggling device or server from a storm of expensive
reconnects (an OPC UA session with its subscriptions, a broker session), but after a long
outage it also delays recovery by up to its maximum. So while waiting out a long delay, the
peer's address is probed cheaply, a TCP connect closed at once, every ``probe_interval``,
and the wait ends when a peer that refused the probe accepts one again. Only that
transition cuts it short: a peer that accepts connections but refuses sessions (a wrong
password, an untrusted certificate) keeps its full backoff. A source without an address
(a serial line) waits the whole delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

Address = tuple[str, int]


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half fixed, half random.

    The random half spreads the reconnects of many gateways after a shared outage (a
    switch reboot) so they do not hit the devices in lockstep.
    """
    ceiling = min(max_s, initial_s * 2 ** min(attempt, 30))
    return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


async def accepts(address: Address, timeout_s: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout_s`` (then closed)."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(*address)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Backoff:
    """The retry delays of one connection, and the wait that a probe may end early."""

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        probe_interval_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.probe_interval_s = probe_interval_s
        self.attempt = 0
        self.cut_short = 0  # waits ended early because the peer came back
        self._rng = rng or random.Random()
        self._peer_down = False  # the last probe was refused (kept across waits)

    def reset(self) -> None:
        """The connection works again: the next failure starts from ``initial_s``."""
        self.attempt = 0
        self._peer_down = False

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling."""
        delay = backoff_delay(self.attempt, self.initial_s, self.max_s, self._rng)
        self.attempt += 1
        return delay

    async def wait(
        self, delay_s: float, address: Address | None, stop: asyncio.Event | None = None
    ) -> bool:
        """Sleep ``delay_s``, or less once ``address`` accepts again after refusing a probe
        (then the backoff restarts from ``initial_s``), or until ``stop`` is set. True if
        the wait was cut short by the probe.

        The first probe comes at a random point of the first interval, which spreads the
        reconnects of many gateways when a shared peer returns.
        """
        interval = self.probe_interval_s
        probing = address is not None and 0 < interval < delay_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay_s
        pause = self._rng.uniform(0, interval) if probing else delay_s
        while (left := deadline - loop.time()) > 0:
            if await _stopped(stop, min(pause, left)) or not probing or loop.time() >= deadline:
                return False
            pause = interval
            assert address is not None
            reachable = await accepts(address, min(interval, max(deadline - loop.time(), 0.05)))
            came_back, self._peer_down = reachable and self._peer_down, not reachable
            if came_back:
                self.attempt = 0
                self.cut_short += 1
                return True
        return False


async def _stopped(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep ``seconds``; True at once if ``stop`` is or becomes set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
