"""Sends spooled batches to the uplinks: one task per uplink, each with its own retries.

A batch leaves the spool only when every uplink has acknowledged it. Each uplink works
two lanes: live batches (closed within ``live_age``) go first, in order, as soon as they
exist; the backlog an outage left behind goes in order too, but at most ``replay_rate``
batches a second, so a long outage does not delay live data by its own length. A replayed
batch keeps its batch id (the stores are idempotent by it) and carries the REPLAYED flag
on its rows and ``edge_agent.replayed`` in its metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from agent import quality as q
from agent.batch import META_PREFIX, Batch
from agent.encoding import batch_of, decode
from agent.health import ProblemLog
from agent.metrics import Metrics
from agent.spool import Spool, SpooledBatch
from agent.supervisor import backoff_delay
from agent.uplinks import Uplink

_RECENT = 256  # batches kept decoded for the live lane


class _TokenBucket:
    """``rate`` tokens a second, at most one second's worth saved up."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = 1.0
        self.at = time.monotonic()

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one is due."""
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def replayed(batch: Batch) -> Batch:
    """The batch flagged as replayed: REPLAYED on every row, and in the metadata."""
    table = batch.table
    flags = table["quality"].to_numpy() | np.uint16(q.Flag.REPLAYED)
    index = table.schema.get_field_index("quality")
    table = table.set_column(index, table.schema.field(index), pa.array(flags, pa.uint16()))
    metadata = dict(table.schema.metadata or {})
    metadata[f"{META_PREFIX}replayed".encode()] = b"true"
    table = table.replace_schema_metadata(metadata)
    return Batch(
        batch.batch_id,
        batch.gateway_id,
        batch.window_start_ns,
        batch.window_end_ns,
        table,
        batch.quality,
    )


class Forwarder:
    def __init__(
        self,
        spool: Spool,
        uplinks: list[Uplink],
        metrics: Metrics,
        problems: ProblemLog,
        replay_rate: float,
        live_age_ns: int,
        delivered: Callable[[Batch], None],
    ) -> None:
        self.spool = spool
        self.uplinks = uplinks
        self.metrics = metrics
        self.problems = problems
        self.replay_rate = replay_rate
        self.live_age_ns = live_age_ns
        self.delivered = delivered
        self._new = {uplink.name: asyncio.Event() for uplink in uplinks}
        self._rng = random.Random()
        self._progress = asyncio.Event()
        # batches just committed, by id: the live lane sends them without decoding the
        # spooled bytes again (a restart or an evicted entry falls back to decoding)
        self._recent: dict[str, Batch] = {}

    def remember(self, batch: Batch) -> None:
        self._recent[batch.batch_id] = batch
        while len(self._recent) > _RECENT:
            del self._recent[next(iter(self._recent))]

    def wake(self) -> None:
        """New batches are in the spool."""
        for event in self._new.values():
            event.set()

    def unsent(self) -> int:
        return sum(len(self.spool.pending(uplink.name, limit=1)) for uplink in self.uplinks)

    async def run(self, uplink: Uplink) -> None:
        """Forward to one uplink until cancelled."""
        bucket = _TokenBucket(self.replay_rate)
        new = self._new[uplink.name]
        while True:
            new.clear()
            now = time.time_ns()
            live = self.spool.pending(uplink.name, created_from=now - self.live_age_ns, limit=1)
            if live:
                await self._forward(uplink, live[0], replay=False)
                continue
            backlog = self.spool.pending(uplink.name, limit=1)
            self.metrics.backlog.labels(uplink.name).set(len(backlog))
            if not backlog:
                await new.wait()
                continue
            wait = bucket.take()
            if wait:
                await _wait(new, wait)
                continue
            await self._forward(uplink, backlog[0], replay=True)

    async def _forward(self, uplink: Uplink, item: SpooledBatch, replay: bool) -> None:
        batch = self._recent.get(item.batch_id)
        if batch is None:  # after a restart, or evicted: decode the spooled bytes
            data = self.spool.data(item.seq)
            batch = batch_of(decode(data), data)
        if replay:
            batch = replayed(batch)
            self.metrics.replayed.labels(uplink.name).inc()
        await send_with_retry(uplink, batch, self.problems, self.metrics, self._rng)
        self.metrics.batches.labels(uplink.name).inc()
        self.metrics.batch_points.labels(uplink.name).inc(batch.points)
        if self.spool.acknowledge(uplink.name, item.seq):
            self._recent.pop(item.batch_id, None)
            self.delivered(batch)
        self._progress.set()

    async def drain(self, timeout_s: float) -> None:
        """Wait until every uplink has every spooled batch, or the time is up."""
        deadline = time.monotonic() + timeout_s
        while self.unsent() and time.monotonic() < deadline:
            self._progress.clear()
            await _wait(self._progress, deadline - time.monotonic())


async def send_with_retry(
    uplink: Uplink, batch: Batch, problems: ProblemLog, metrics: Metrics, rng: random.Random
) -> None:
    """Send until the uplink acknowledges, backing off with jitter; an outage is logged
    once and its end as "recovered"."""
    attempt = 0
    while True:
        try:
            await uplink.send(batch)
            break
        except Exception as exc:  # an uplink failure must not stop acquisition
            metrics.uplink_errors.labels(uplink.name).inc()
            problems.fail(uplink.name, "uplink write failed", error=str(exc))
            await asyncio.sleep(backoff_delay(attempt, 0.5, 30.0, rng))
            attempt += 1
    problems.ok(uplink.name)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
