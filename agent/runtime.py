"""The agent: sources -> pipeline -> batcher -> uplinks, wired together and stopped cleanly.

Frames from every source meet in one bounded queue; when it is full, ``ctx.emit`` waits,
which slows the pollers instead of growing memory. A closer task cuts aligned windows on
the wall clock, and a writer task hands batches to the uplinks in order, retrying with
backoff. On stop, sources are cancelled first, the queue is drained and every open window
is flushed, so SIGTERM loses nothing that was acquired.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from functools import partial
from typing import Any

import structlog

from agent import systemd
from agent.batch import Batch, Batcher, TagTable
from agent.config import ParquetUplinkConfig
from agent.config_load import LoadedConfig
from agent.dataquality import QualityTally
from agent.encoding import encode
from agent.forwarder import Forwarder, send_with_retry
from agent.frame import Frame
from agent.health import ProblemLog
from agent.http import StatusServer
from agent.metrics import Metrics
from agent.resample import Resampler
from agent.spool import Spool
from agent.supervisor import SESSION, SourceRunner
from agent.uplinks import Uplink, make_uplink
from protocols.sdk import DriverContext

log = structlog.get_logger()

_STOP_SOURCES_S = 1.0


class Agent:
    def __init__(self, loaded: LoadedConfig, metrics: Metrics | None = None) -> None:
        self.loaded = loaded
        config = loaded.config
        self.metrics = metrics or Metrics()
        self.sources = [source for source in config.sources if source.enabled]
        self.tag_table = TagTable(self.sources)
        self.tally = QualityTally(
            self.tag_table.source_offset,
            self.tag_table.tag_source,
            self.tag_table.rate_ns,
            config.batch.window,
        )
        self.batcher = Batcher(
            self.tag_table,
            config.batch.window,
            config.batch.lateness,
            config.agent.gateway_id,
            loaded.config_hash,
            self.tally,
            self._clock_figures,
        )
        self.uplinks: list[Uplink] = [make_uplink(u) for u in config.uplinks]
        self.resampler: Resampler | None = None
        self.wide_uplinks: list[Uplink] = []
        if config.resample is not None:
            methods = [tag.resample_method() for source in self.sources for tag in source.tags]
            self.resampler = Resampler(
                self.tag_table, methods, config.resample.period, config.resample.max_gap
            )
            wide = ParquetUplinkConfig(name="resample", path=config.resample.path)
            self.wide_uplinks = [make_uplink(wide)]
        self.spool = Spool(config.agent.data_dir / "spool.sqlite", [u.name for u in self.uplinks])
        self.spool_config = config.spool
        self.uplink_problems = ProblemLog(log)
        self.forwarder = Forwarder(
            self.spool,
            self.uplinks,
            self.metrics,
            self.uplink_problems,
            config.spool.replay_rate,
            2 * config.batch.window + config.batch.lateness,
            self._delivered,
        )
        self._acquiring = asyncio.Event()
        self._acquiring.set()
        self._spool_problems = ProblemLog(log)
        # resampled (wide) batches for their own uplink; None ends the writer
        self._wide: asyncio.Queue[Batch | None] = asyncio.Queue()
        self.runners = [
            SourceRunner(
                index,
                loaded.drivers[source.name](source),
                self._enqueue,
                partial(
                    DriverContext, source, metrics=self.metrics, data_dir=config.agent.data_dir
                ),
                acquired=self.tally.add,
            )
            for index, source in enumerate(self.sources)
        ]
        self.batches_written = 0
        self.points_written = 0
        self.written: list[Batch] = []  # the most recent batches, for demo and tests
        self.wide_written: list[Batch] = []  # the same for the resampled output
        self.status_port: int | None = None

    def _clock_figures(self) -> dict[int, dict[str, Any]]:
        """Per source: its clock model's estimate or, for a source without timestamps
        (Modbus), the uncertainty of stamping at the request midpoint: half the RTT."""
        figures: dict[int, dict[str, Any]] = {}
        for runner in self.runners:
            described = runner.clock.describe()
            if described is not None:
                figures[runner.index] = described
                continue
            rtts = [
                stats.rtt_s.percentile(50, last=256) for stats in runner.ctx.all_poll_stats.values()
            ]
            if any(rtts):
                figures[runner.index] = {"uncertainty_ms": round(max(rtts) / 2 * 1e3, 3)}
        return figures

    def _publish(self, batches: list[Batch]) -> None:
        """Closed batches into the spool (fsync) before anything is sent; their quality
        figures to the metrics; the caps enforced; the forwarder woken."""
        if not batches:
            return
        for batch in batches:
            for source, figures in (batch.quality or {}).get("sources", {}).items():
                if figures["completeness"] is not None:
                    self.metrics.completeness.labels(source).set(figures["completeness"])
                if figures["validity"] is not None:
                    self.metrics.validity.labels(source).set(figures["validity"])
                if "latency_max_ms" in figures:
                    self.metrics.latency.labels(source).set(figures["latency_max_ms"] / 1e3)
        closed_until = self.batcher.closed_until
        assert closed_until is not None  # set by the close that produced the batches
        encoded = [dataclasses.replace(b, data=encode(b.table)) for b in batches]
        self.spool.commit_batches(encoded, closed_until)
        for batch in encoded:
            self.forwarder.remember(batch)
        self._enforce_caps()
        self.forwarder.wake()
        if self.resampler is not None:
            for batch in batches:
                for wide in self.resampler.feed(batch):
                    self._wide.put_nowait(wide)

    def _enforce_caps(self) -> None:
        config = self.spool_config
        count, size, oldest = self.spool.size()
        now = time.time_ns()
        full = size > config.max_bytes or (oldest is not None and now - oldest > config.max_age)
        if full and config.overflow == "drop_oldest":
            dropped, points = self.spool.drop_oldest(config.max_bytes, config.max_age, now)
            self.metrics.points_lost.labels("overflow").inc(points)
            self._spool_problems.fail(
                "overflow", "spool full: oldest batches dropped", batches=dropped, points=points
            )
            count, size, _ = self.spool.size()
        elif full:
            self._acquiring.clear()
            self._spool_problems.fail("overflow", "spool full: acquisition paused", bytes=size)
        else:
            self._acquiring.set()
            self._spool_problems.ok("overflow")
        self.metrics.spool_batches.set(count)
        self.metrics.spool_bytes.set(size)

    def _delivered(self, batch: Batch) -> None:
        """Every uplink has the batch and the spool let it go."""
        self.batches_written += 1
        self.points_written += batch.points
        self.written = [*self.written[-63:], batch]
        if not self._acquiring.is_set():
            self._enforce_caps()

    async def _enqueue(self, index: int, frame: Frame) -> None:
        """Every source's sink: the frame log, then the batcher, in the source's own task.
        (Both are synchronous: a queue and a consumer task in between cost a task switch
        per poll and bought nothing on one event loop.)"""
        await self._acquiring.wait()  # a full spool with overflow = "stop_acquiring"
        self.spool.append_frame(index, frame)
        self.batcher.add(index, frame)

    def health(self) -> dict[str, Any]:
        sources = {
            runner.config.name: not runner.ctx.problems.is_open(SESSION) for runner in self.runners
        }
        uplinks_ok = not self.uplink_problems.open_keys
        return {
            "ok": all(sources.values()) and uplinks_ok,
            "sources": sources,
            "uplinks_ok": uplinks_ok,
            "pending_points": self.batcher.pending_points,
            "batches_written": self.batches_written,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then flush and return."""
        status = await self._start_status_server()
        log.info(
            "agent started",
            gateway=self.loaded.config.agent.gateway_id,
            sources=len(self.runners),
            tags=len(self.tag_table),
            config_hash=self.loaded.config_hash,
        )
        self._recover()
        sources = [
            asyncio.create_task(runner.run(), name=f"source:{runner.config.name}")
            for runner in self.runners
        ]
        closer = asyncio.create_task(self._close_windows(), name="closer")
        forwarders = [
            asyncio.create_task(self.forwarder.run(uplink), name=f"uplink:{uplink.name}")
            for uplink in self.uplinks
        ]
        writer = asyncio.create_task(self._write_wide(), name="wide-writer")
        watchdog = None
        if (interval := systemd.watchdog_interval_s()) is not None:
            watchdog = asyncio.create_task(systemd.keep_watchdog_fed(interval), name="watchdog")
        systemd.notify("READY=1")
        try:
            await stop.wait()
        finally:
            log.info("agent stopping")
            systemd.notify("STOPPING=1")
            self._acquiring.set()  # a frame held back by a full spool is kept, not lost
            for task in sources:
                task.cancel()
            await asyncio.wait(sources, timeout=_STOP_SOURCES_S)
            closer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closer
            for runner in self.runners:  # what deadband/swinging door/features still hold
                self.batcher.add(runner.index, runner.pipeline.flush())
            self._publish(self.batcher.flush())
            for wide in self.resampler.flush() if self.resampler is not None else []:
                self._wide.put_nowait(wide)
            self._wide.put_nowait(None)
            await self._drain(forwarders, writer)
            if status is not None:
                await status.stop()
            if watchdog is not None:
                watchdog.cancel()
            log.info(
                "agent stopped",
                batches_written=self.batches_written,
                points_written=self.points_written,
            )

    async def _start_status_server(self) -> StatusServer | None:
        listen = self.loaded.config.agent.metrics
        if not listen:
            return None
        host, _, port = listen.rpartition(":")
        server = StatusServer(self.metrics.registry, self.health)
        try:
            self.status_port = await server.start(host.strip("[]"), int(port))
        except OSError as exc:
            log.warning("metrics endpoint not started", listen=listen, error=str(exc))
            return None
        return server

    def _recover(self) -> None:
        """Put back what the spool held when the agent last stopped (or was killed)."""
        recovered = self.spool.recover()
        self.batcher.restore(recovered.closed_until)
        for source, frame in recovered.frames:
            self.batcher.add(source, frame)
        count, size, _ = self.spool.size()
        if recovered.frames or count:
            log.info(
                "spool recovered",
                frames=len(recovered.frames),
                points=self.batcher.pending_points,
                batches_unsent=count,
                bytes_unsent=size,
            )
        self.metrics.spool_batches.set(count)
        self.metrics.spool_bytes.set(size)

    async def _drain(
        self, forwarders: list[asyncio.Task[None]], writer: asyncio.Task[None]
    ) -> None:
        """Give the uplinks until the deadline to take what is spooled; the rest stays in
        the spool for the next start."""
        timeout_s = self.spool_config.drain_timeout / 1e9
        deadline = time.monotonic() + timeout_s
        await self.forwarder.drain(timeout_s)
        for task in forwarders:
            task.cancel()
        await asyncio.gather(*forwarders, return_exceptions=True)
        try:
            await asyncio.wait_for(writer, max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.error("resample output flush timed out", unsent_batches=self._wide.qsize())
        for uplink in [*self.uplinks, *self.wide_uplinks]:
            await uplink.close()
        unsent, size, _ = self.spool.size()
        if unsent:
            log.warning("batches left in the spool for the next start", batches=unsent, bytes=size)
        self.spool.close()

    async def _close_windows(self) -> None:
        period = min(self.batcher.window_ns / 1e9 / 4, 0.25)
        while True:
            await asyncio.sleep(period)
            late_before = self.batcher.late_points
            self._publish(self.batcher.close_due(time.time_ns()))
            self.metrics.late_points.inc(self.batcher.late_points - late_before)

    async def _write_wide(self) -> None:
        """The resampled output: written with retries, not spooled (it is derived from
        the spooled long form)."""
        rng = random.Random()
        while True:
            batch = await self._wide.get()
            if batch is None:
                return
            for uplink in self.wide_uplinks:
                await send_with_retry(uplink, batch, self.uplink_problems, self.metrics, rng)
            self.wide_written = [*self.wide_written[-63:], batch]
