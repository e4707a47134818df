"""Sends spooled batches to the uplinks: one task per uplink, each with its own retries.

A batch leaves the spool only when every uplink has acknowledged it. Each uplink works
two lanes: live batches (closed within ``live_age``) go first, in order, as soon as they
exist; the backlog an outage left behind goes in order too, but at most ``replay_rate``
batches a second, so a long outage does not delay live data by its own length. A replayed
batch keeps its batch id (the stores are idempotent by it) and carries the REPLAYED flag
on its rows and ``edge_agent.replayed`` in its metadata.

Failures are told apart. A batch whose spooled bytes fail their checksum or do not decode,
or that an uplink refuses for good (:class:`agent.uplinks.RejectedBatch`), is a poison
batch: it goes to the quarantine on disk with its reason (never silently deleted), is
counted, and the uplink goes on with the next one. Anything else is an outage: retried with
backoff, each try bounded by the uplink's ``send_timeout``. An acknowledgement the spool
cannot record (disk full) is kept in memory and recorded later: the batch is not sent
again meanwhile (after a kill it may be, and the stores are idempotent by batch id).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import structlog

from agent.acquisition import quality as q
from agent.acquisition.backoff import backoff_delay
from agent.config.model import UplinkRetry
from agent.ops.health import ProblemLog
from agent.ops.metrics import Metrics
from agent.ops.tasks import Heartbeat
from agent.store.quarantine import Quarantine
from agent.store.spool import CorruptBatch, Spool, SpooledBatch
from agent.uplinks import RejectedBatch, Uplink
from agent.windows.batch import META_PREFIX, Batch

log = structlog.get_logger()


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
        storage: ProblemLog,
        quarantine: Quarantine,
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.problems = problems
        self.replay_rate = replay_rate
        self.live_age_ns = live_age_ns
        self.delivered = delivered
        self.storage = storage
        self.quarantine = quarantine
        self._new: dict[str, asyncio.Event] = {}
        # acknowledgements the spool could not record yet, per uplink: seq -> (batch id,
        # the batch if it was delivered rather than quarantined)
        self._unrecorded: dict[str, dict[int, tuple[str, Batch | None]]] = {}
        # for health: when each uplink last delivered, and whether it has work waiting
        self._delivered_at: dict[str, float] = {}
        self._busy: dict[str, bool] = {}
        self._buckets: dict[str, _TokenBucket] = {}
        self.in_flight: dict[str, int] = {}  # uplink -> seq of the batch being sent
        self.uplinks: list[Uplink] = []
        for uplink in uplinks:
            self.add(uplink)
        self._rng = random.Random()
        self._progress = asyncio.Event()
        # batches just committed, by id, with when (monotonic ns): the live lane sends them
        # without decoding the spooled bytes again. Kept only as long as the live lane
        # would take them (``live_age``, a few windows): a backlog is decoded from the spool
        # (a 1 s batch of 10,000 tags at 100 ms is ~5 MiB of table; hundreds of them kept
        # through an outage were most of the agent's memory)
        self._recent: dict[str, tuple[int, Batch]] = {}

    def add(self, uplink: Uplink) -> None:
        """An uplink to forward to (at start, or added or replaced by a reload); its
        ``run`` task is the caller's to start."""
        self.uplinks.append(uplink)
        self._new[uplink.name] = asyncio.Event()
        self._unrecorded.setdefault(uplink.name, {})
        self._delivered_at[uplink.name] = time.monotonic()
        self._busy[uplink.name] = False
        self._buckets[uplink.name] = _TokenBucket(self.replay_rate)

    def remove(self, name: str, replaced: bool) -> None:
        """Forget an uplink whose task was stopped. A ``replaced`` one keeps the
        acknowledgements the spool could not record yet: its successor does not resend
        those batches."""
        self.uplinks = [uplink for uplink in self.uplinks if uplink.name != name]
        for table in (self._new, self._delivered_at, self._busy, self._buckets):
            del table[name]
        if not replaced:
            del self._unrecorded[name]

    def set_replay_rate(self, rate: float) -> None:
        self.replay_rate = rate
        for bucket in self._buckets.values():
            bucket.rate = rate

    def remember(self, batch: Batch) -> None:
        """A batch just committed to the spool, for the live lane; older ones forgotten."""
        now = time.monotonic_ns()
        self._recent[batch.batch_id] = (now, batch)
        for batch_id, (at, _) in list(self._recent.items()):
            if now - at <= self.live_age_ns:
                break  # in commit order: the rest are younger
            del self._recent[batch_id]

    def wake(self) -> None:
        """New batches are in the spool."""
        for event in self._new.values():
            event.set()

    def unsent(self) -> int:
        return sum(len(self._pending(uplink.name, None)) for uplink in self.uplinks)

    def problem(self, uplink: str, max_age_s: float) -> str | None:
        """Why the uplink counts as down, or None: it has batches to send and has not
        delivered one for longer than ``max_age_s``."""
        silent = time.monotonic() - self._delivered_at[uplink]
        if not self._busy[uplink] or silent <= max_age_s:
            return None
        return f"no batch delivered for {silent:.0f} s"

    def stall_deadline_s(self, uplink: Uplink) -> float:
        """The longest a working forwarder goes between heartbeats: a try that times out,
        then the longest backoff; past that (and a margin) it is stalled."""
        send_timeout_s, _, backoff_max_s = _retry_settings(uplink)
        return send_timeout_s + backoff_max_s + 2.0

    def _pending(self, uplink: str, created_from: int | None) -> list[SpooledBatch]:
        """The first batch the uplink still owes, skipping those it acknowledged already
        whose acknowledgement the spool could not record yet."""
        skip = self._unrecorded[uplink]
        found = self.spool.pending(uplink, created_from=created_from, limit=1 + len(skip))
        return [item for item in found if item.seq not in skip][:1]

    async def run(self, uplink: Uplink, heartbeat: Heartbeat) -> None:
        """Forward to one uplink until cancelled."""
        bucket = self._buckets[uplink.name]
        new = self._new[uplink.name]
        while True:
            heartbeat.beat()
            new.clear()
            self._record_acknowledgements(uplink.name)
            now = time.time_ns()
            live = self._pending(uplink.name, now - self.live_age_ns)
            if live:
                self._busy[uplink.name] = True
                await self._forward(uplink, live[0], False, heartbeat)
                continue
            backlog = self._pending(uplink.name, None)
            self.metrics.backlog.labels(uplink.name).set(len(backlog))
            self._busy[uplink.name] = bool(backlog)
            if not backlog:
                heartbeat.rest()
                await _wait(new, 1.0 if self._unrecorded[uplink.name] else None)
                continue
            wait = bucket.take()
            if wait:
                await _wait(new, wait)
                continue
            await self._forward(uplink, backlog[0], True, heartbeat)

    async def _forward(
        self, uplink: Uplink, item: SpooledBatch, replay: bool, heartbeat: Heartbeat
    ) -> None:
        recent = self._recent.get(item.batch_id)
        batch = None if recent is None else recent[1]
        if batch is None:  # after a restart, or out of the live lane: decode the spooled bytes
            try:
                batch = self.spool.batch(item.seq)
            except CorruptBatch as corrupt:
                reason = f"corrupt in the spool: {corrupt.reason}"
                self._quarantine(
                    uplink.name,
                    corrupt.batch_id,
                    corrupt.data,
                    corrupt.points,
                    reason,
                    every_uplink=True,
                )
                try:
                    self.spool.remove(item.seq)
                except sqlite3.Error:  # storage failing: skipped until it can be removed
                    self._acknowledge(uplink.name, item.seq, item.batch_id, None)
                return
        if replay:
            batch = replayed(batch)
            self.metrics.replayed.labels(uplink.name).inc()
        sent: Batch | None = batch
        self.in_flight[uplink.name] = item.seq
        try:
            await send_with_retry(uplink, batch, self.problems, self.metrics, self._rng, heartbeat)
        except RejectedBatch as rejected:
            sent = None
            self._quarantine(
                uplink.name,
                batch.batch_id,
                batch.data,
                batch.points,
                f"rejected by uplink {uplink.name}: {rejected}",
            )
        else:
            self.metrics.batches.labels(uplink.name).inc()
            self.metrics.batch_points.labels(uplink.name).inc(batch.points)
        finally:
            del self.in_flight[uplink.name]
        self._delivered_at[uplink.name] = time.monotonic()
        self._acknowledge(uplink.name, item.seq, item.batch_id, sent)
        self._progress.set()

    def _acknowledge(self, uplink: str, seq: int, batch_id: str, delivered: Batch | None) -> None:
        """Record that the uplink is done with a batch (``delivered``: sent, not
        quarantined); the spool lets it go once every uplink is."""
        try:
            gone = self.spool.acknowledge(uplink, seq)
        except sqlite3.Error as exc:
            self._unrecorded[uplink][seq] = (batch_id, delivered)
            self.metrics.storage_errors.labels("spool_acknowledge").inc()
            self.storage.fail(
                "spool_acknowledge",
                "storage failing: acknowledgement held in memory and retried",
                error=str(exc),
            )
            return
        self._unrecorded[uplink].pop(seq, None)
        if not any(self._unrecorded.values()) and self.storage.is_open("spool_acknowledge"):
            self.storage.ok("spool_acknowledge")
        if gone:
            self._recent.pop(batch_id, None)
            if delivered is not None:
                self.delivered(delivered)

    def _record_acknowledgements(self, uplink: str) -> None:
        for seq, (batch_id, delivered) in sorted(self._unrecorded[uplink].items()):
            self._acknowledge(uplink, seq, batch_id, delivered)
            if seq in self._unrecorded[uplink]:
                return  # storage still fails

    def _quarantine(
        self,
        uplink: str,
        batch_id: str,
        data: bytes | None,
        points: int,
        reason: str,
        every_uplink: bool = False,
    ) -> None:
        """Keep a poison batch on disk with its reason, count it, log it once."""
        try:
            path = self.quarantine.put(
                batch_id, data or b"", reason, None if every_uplink else uplink, points
            )
        except OSError as exc:
            path = None
            log.error("quarantine not written: the batch is dropped", error=str(exc))
        kind = "corrupt" if every_uplink else "rejected"
        self.metrics.batches_quarantined.labels(uplink, kind).inc()
        self.metrics.points_lost.labels(kind).inc(points)
        log.error(
            "poison batch quarantined: the uplink goes on with the next",
            uplink=uplink,
            batch_id=batch_id,
            points=points,
            reason=reason,
            path=str(path) if path is not None else None,
        )

    async def drain(self, timeout_s: float) -> None:
        """Wait until every uplink has every spooled batch, or the time is up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if not self.unsent():
                    return
            except sqlite3.Error as exc:  # what is left stays for the next start
                log.error("spool unreadable while draining", error=str(exc))
                return
            self._progress.clear()
            await _wait(self._progress, deadline - time.monotonic())


def _retry_settings(uplink: Uplink) -> tuple[float, float, float]:
    """(send timeout, initial backoff, longest backoff) in seconds, from the uplink's
    config where it has one (the resample output's uplink is made in code)."""
    config = getattr(uplink, "config", None)
    if not isinstance(config, UplinkRetry):
        config = UplinkRetry()
    return config.send_timeout / 1e9, config.backoff_initial / 1e9, config.backoff_max / 1e9


async def send_with_retry(
    uplink: Uplink,
    batch: Batch,
    problems: ProblemLog,
    metrics: Metrics,
    rng: random.Random,
    heartbeat: Heartbeat,
) -> None:
    """Send until the uplink acknowledges, backing off with jitter; an outage is logged
    once and its end as "recovered". A batch the uplink rejects for good raises
    RejectedBatch at once."""
    timeout_s, initial_s, max_s = _retry_settings(uplink)
    attempt = 0
    while True:
        heartbeat.beat()
        try:
            await asyncio.wait_for(uplink.send(batch), timeout_s)
            break
        except RejectedBatch:
            problems.ok(uplink.name)  # the uplink answered: it is up
            raise
        except Exception as exc:  # an uplink failure must not stop acquisition
            if isinstance(exc, TimeoutError) and not str(exc):
                exc = TimeoutError(f"not acknowledged within send_timeout ({timeout_s:g} s)")
            metrics.uplink_errors.labels(uplink.name).inc()
            problems.fail(uplink.name, "uplink write failed", error=str(exc))
            heartbeat.beat()
            await asyncio.sleep(backoff_delay(attempt, initial_s, max_s, rng))
            attempt += 1
    problems.ok(uplink.name)


async def _wait(event: asyncio.Event, seconds: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
