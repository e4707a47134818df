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
import random
import time
from functools import partial
from typing import Any

import structlog

from agent import systemd
from agent.batch import Batch, Batcher, TagTable
from agent.config_load import LoadedConfig
from agent.frame import Frame
from agent.health import ProblemLog
from agent.http import StatusServer
from agent.metrics import Metrics
from agent.supervisor import SESSION, SourceRunner, backoff_delay
from agent.uplinks import Uplink, make_uplink
from protocols.sdk import DriverContext

log = structlog.get_logger()

_STOP_SOURCES_S = 1.0
_FLUSH_DEADLINE_S = 30.0


class Agent:
    def __init__(self, loaded: LoadedConfig, metrics: Metrics | None = None) -> None:
        self.loaded = loaded
        config = loaded.config
        self.metrics = metrics or Metrics()
        self.sources = [source for source in config.sources if source.enabled]
        self.tag_table = TagTable(self.sources)
        self.batcher = Batcher(
            self.tag_table,
            config.batch.window,
            config.batch.lateness,
            config.agent.gateway_id,
            loaded.config_hash,
        )
        self.uplinks: list[Uplink] = [make_uplink(u) for u in config.uplinks]
        self._frames: asyncio.Queue[tuple[int, Frame] | None] = asyncio.Queue(
            config.agent.queue_frames
        )
        self._batches: asyncio.Queue[Batch | None] = asyncio.Queue()
        self.runners = [
            SourceRunner(
                index,
                loaded.drivers[source.name](source),
                self._enqueue,
                partial(
                    DriverContext, source, metrics=self.metrics, data_dir=config.agent.data_dir
                ),
            )
            for index, source in enumerate(self.sources)
        ]
        self.uplink_problems = ProblemLog(log)
        self.batches_written = 0
        self.points_written = 0
        self.written: list[Batch] = []  # the most recent batches, for demo and tests
        self.status_port: int | None = None

    async def _enqueue(self, index: int, frame: Frame) -> None:
        await self._frames.put((index, frame))

    def health(self) -> dict[str, Any]:
        sources = {
            runner.config.name: not runner.ctx.problems.is_open(SESSION)
            for runner in self.runners
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
        sources = [
            asyncio.create_task(runner.run(), name=f"source:{runner.config.name}")
            for runner in self.runners
        ]
        consumer = asyncio.create_task(self._consume(), name="batcher")
        closer = asyncio.create_task(self._close_windows(), name="closer")
        writer = asyncio.create_task(self._write_batches(), name="writer")
        watchdog = None
        if (interval := systemd.watchdog_interval_s()) is not None:
            watchdog = asyncio.create_task(systemd.keep_watchdog_fed(interval), name="watchdog")
        systemd.notify("READY=1")
        try:
            await stop.wait()
        finally:
            log.info("agent stopping")
            systemd.notify("STOPPING=1")
            for task in sources:
                task.cancel()
            await asyncio.wait(sources, timeout=_STOP_SOURCES_S)
            closer.cancel()
            await self._frames.put(None)
            await consumer
            with contextlib.suppress(asyncio.CancelledError):
                await closer
            for runner in self.runners:  # what deadband/swinging door/features still hold
                self.batcher.add(runner.index, runner.pipeline.flush())
            for batch in self.batcher.flush():
                self._batches.put_nowait(batch)
            self._batches.put_nowait(None)
            try:
                await asyncio.wait_for(writer, _FLUSH_DEADLINE_S)
            except TimeoutError:
                log.error("uplink flush timed out", unsent_batches=self._batches.qsize())
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

    async def _consume(self) -> None:
        while True:
            item = await self._frames.get()
            if item is None:
                return
            self.batcher.add(*item)

    async def _close_windows(self) -> None:
        period = min(self.batcher.window_ns / 1e9 / 4, 0.25)
        while True:
            await asyncio.sleep(period)
            late_before = self.batcher.late_points
            for batch in self.batcher.close_due(time.time_ns()):
                self._batches.put_nowait(batch)
            self.metrics.late_points.inc(self.batcher.late_points - late_before)

    async def _write_batches(self) -> None:
        rng = random.Random()
        while True:
            batch = await self._batches.get()
            if batch is None:
                return
            for uplink in self.uplinks:
                attempt = 0
                while True:
                    try:
                        await uplink.send(batch)
                        break
                    except Exception as exc:  # an uplink failure must not stop acquisition
                        self.metrics.uplink_errors.labels(uplink.name).inc()
                        self.uplink_problems.fail(
                            uplink.name, "uplink write failed", error=str(exc)
                        )
                        await asyncio.sleep(backoff_delay(attempt, 0.5, 30.0, rng))
                        attempt += 1
                self.uplink_problems.ok(uplink.name)
                self.metrics.batches.labels(uplink.name).inc()
                self.metrics.batch_points.labels(uplink.name).inc(batch.points)
            self.batches_written += 1
            self.points_written += batch.points
            self.written = [*self.written[-63:], batch]
