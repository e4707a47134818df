"""The agent: sources -> pipeline -> batcher -> uplinks, wired together and stopped cleanly.

Each source's task hands its frames straight to the frame log and the batcher
(``_enqueue``); ``ctx.emit`` waits only while acquisition is paused (a full spool with
``overflow = "stop_acquiring"``, or storage failing with memory full). A closer task cuts
aligned windows on the wall clock and commits them to the spool; one forwarder task per
uplink sends them in order, retrying with backoff. On stop, sources are cancelled first,
what the pipelines hold is flushed and every open window closed, so SIGTERM loses nothing
that was acquired.

Every long-lived task runs under :class:`agent.ops.tasks.TaskSupervisor` (restarted when it
fails; the agent exits non-zero when one cannot be kept alive), and the systemd watchdog is
fed only while none is failing or stalled.

Storage faults (disk full, I/O errors, a read-only filesystem) never stop acquisition: a
frame the frame log cannot take, and a batch the spool cannot take, are held in memory and
written as soon as storage accepts them again (what only memory holds is in the at-risk
ledger, :mod:`agent.store.atrisk`); past ``spool.memory_max_bytes`` held, acquisition pauses
until storage recovers, so nothing acquired is dropped uncounted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import structlog

from agent.acquisition.backoff import backoff_delay
from agent.acquisition.frame import Frame
from agent.acquisition.supervisor import SourceRunner, describe_error
from agent.config.load import ConfigError, LoadedConfig, load_config
from agent.config.model import ParquetUplinkConfig, SourceConfig
from agent.config.paths import agent_dirs, require_writable
from agent.ops import memory, systemd
from agent.ops.health import SETTLE_S, ProblemLog
from agent.ops.http import StatusServer
from agent.ops.logs import configure
from agent.ops.metrics import Metrics
from agent.ops.pauses import freeze_long_lived
from agent.ops.reload import ReloadPlan, ReloadResult, plan_reload
from agent.ops.status import RateMeter, forget_series, status_document
from agent.ops.tasks import Heartbeat, TaskSupervisor, first_of
from agent.store.encoding import encode
from agent.store.forwarder import Forwarder, send_with_retry
from agent.store.quarantine import Quarantine
from agent.store.spool import Recovered, Spool
from agent.uplinks import GatewayAware, Uplink, make_uplink
from agent.windows.batch import (
    Batch,
    Batcher,
    TagEntry,
    TagTable,
    layout_entries,
    source_entries,
)
from agent.windows.dataquality import QualityTally
from agent.windows.resample import Resampler, methods_of
from protocols.sdk import Driver, DriverContext, without_credentials

log = structlog.get_logger()

_STOP_SOURCES_S = 1.0
_BETWEEN_POLLS_S = 2.0  # a reload waits this long at most for a source's poll in flight
_GAUGES_EVERY_S = 1.0
_RESUME_BELOW = 0.9  # a full spool is over once back under 90 % of its caps
# A tag owes samples from its first one (value or failure) or, at the latest, this long
# plus one period after the start: connecting may take a few seconds, the first poll is due
# within a period, and a driver that neither answers nor fails by then is not acquiring.
_FIRST_SAMPLE_WITHIN_NS = 10_000_000_000


class Agent:
    def __init__(
        self,
        loaded: LoadedConfig,
        metrics: Metrics | None = None,
        on_delivered: Callable[[Batch], None] | None = None,
    ) -> None:
        """``on_delivered``, opt-in (the demo's live view, tests), sees each batch every
        uplink has: the agent itself keeps none once delivered (at 10,000 tags a 1 s batch
        is megabytes)."""
        self.loaded = loaded
        self.on_delivered = on_delivered
        config = loaded.config
        self.metrics = metrics or Metrics()
        self.sources = [source for source in config.sources if source.enabled]
        self.tag_table = TagTable(self.sources)
        self.tally = QualityTally(
            self.tag_table.source_offset,
            self.tag_table.tag_source,
            self.tag_table.rate_ns,
            config.batch.window,
            grace_ns=_FIRST_SAMPLE_WITHIN_NS + self.tag_table.rate_ns,
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
        self._bind(self.uplinks)
        self.resampler: Resampler | None = None
        self.wide_uplinks: list[Uplink] = []
        if config.resample is not None:
            self.resampler = Resampler(
                self.tag_table,
                methods_of(self.tag_table),
                config.resample.period,
                config.resample.max_gap,
            )
            wide = ParquetUplinkConfig(name="resample", path=config.resample.path)
            self.wide_uplinks = [make_uplink(wide)]
        self.spool = Spool(config.agent.data_dir / "spool.sqlite", [u.name for u in self.uplinks])
        self.spool_config = config.spool
        self.health_config = config.health
        self.uplink_problems = ProblemLog(log, settle_s=SETTLE_S)
        self.storage_problems = ProblemLog(log)
        self.forwarder = Forwarder(
            self.spool,
            self.uplinks,
            self.metrics,
            self.uplink_problems,
            config.spool.replay_rate,
            2 * config.batch.window + config.batch.lateness,
            self._delivered,
            self.storage_problems,
            Quarantine(config.agent.data_dir / "quarantine"),
        )
        self.tasks = TaskSupervisor(self.metrics.task_failures)
        self._acquiring = asyncio.Event()
        self._acquiring.set()
        self._paused: set[str] = set()  # why acquisition waits: "overflow", "storage"
        self._spool_problems = ProblemLog(log, summary_s=60.0)
        # closed batches the spool could not take yet (storage failing), oldest first
        self._held: list[Batch] = []
        self.failed: str | None = None  # why the agent gave up, for a non-zero exit
        # resampled (wide) batches for their own uplink
        self._wide: asyncio.Queue[Batch] = asyncio.Queue()
        # a runner's index names it for the run; its slot in the tag table may change
        self._runner_ids = iter(range(1 << 62))
        self._slots: dict[int, int] = {}  # runner index -> its slot in the tag table
        self.runners = [
            self._runner(source, loaded.drivers[source.name](source), slot)
            for slot, source in enumerate(self.sources)
        ]
        self._reload_lock = asyncio.Lock()
        self._stopping = False
        self.last_reload: tuple[int, ReloadResult] | None = None  # wall ns, result
        self.started_ns = time.time_ns()
        self.rates = RateMeter()
        self.last_quality: tuple[int, dict[str, Any]] | None = None  # window start, figures
        self.batches_written = 0
        self.points_written = 0
        self.status_port: int | None = None

    def _runner(self, source: SourceConfig, driver: Driver, slot: int) -> SourceRunner:
        """A source's runner, in ``slot`` of the current tag table (its driver may describe
        tags as it is made: ``Driver.prepare``)."""
        runner = next(self._runner_ids)
        self._slots[runner] = slot
        return SourceRunner(
            runner,
            driver,
            self._enqueue,
            partial(
                DriverContext,
                source,
                metrics=self.metrics,
                data_dir=self.loaded.config.agent.data_dir,
                describe=partial(self._describe_tag, runner),
            ),
            acquired=self._tally_add,
        )

    def _tally_add(self, runner: int, frame: Frame) -> None:
        self.tally.add(self._slots[runner], frame)

    def _describe_tag(
        self, runner: int, tag: int, name: str | None, lineage: dict[str, Any]
    ) -> None:
        """A driver's word on one of its tags (a unit from a birth certificate, the name of
        a placeholder), for the batches from now on."""
        offset = self.tag_table.source_offset[self._slots[runner]]
        self.tag_table.describe(offset + tag, name, lineage)

    def _clock_figures(self) -> dict[int, dict[str, Any]]:
        """Per source: its clock model's estimate or, for a source without timestamps
        (Modbus), the uncertainty of stamping at the request midpoint: half the RTT."""
        figures: dict[int, dict[str, Any]] = {}
        for runner in self.runners:
            slot = self._slots[runner.index]
            described = runner.clock.describe()
            if described is not None:
                figures[slot] = described
                continue
            rtts = [
                stats.rtt_s.percentile(50, last=256) for stats in runner.ctx.all_poll_stats.values()
            ]
            if any(rtts):
                figures[slot] = {"uncertainty_ms": round(max(rtts) / 2 * 1e3, 3)}
        return figures

    def _publish(self, batches: list[Batch]) -> None:
        """Closed batches into the spool (fsync) before anything is sent; their quality
        figures to the metrics; the caps enforced; the forwarder woken. Batches the spool
        cannot take (storage failing) are held and committed with the next ones."""
        if not batches and not self._held:
            return
        for batch in batches:
            if batch.quality is not None:
                self.last_quality = (batch.window_start_ns, batch.quality)
            for source, figures in (batch.quality or {}).get("sources", {}).items():
                if figures["completeness"] is not None:
                    self.metrics.completeness.labels(source).set(figures["completeness"])
                if figures["validity"] is not None:
                    self.metrics.validity.labels(source).set(figures["validity"])
                if "latency_max_ms" in figures:
                    self.metrics.latency.labels(source).set(figures["latency_max_ms"] / 1e3)
        if self.resampler is not None:
            for batch in batches:
                for wide in self.resampler.feed(batch):
                    self._wide.put_nowait(wide)
        if self._paused:  # windows of a paused acquisition hold nothing: not worth a byte
            batches = [batch for batch in batches if batch.points]
        closed_until = self.batcher.closed_until
        assert closed_until is not None  # set by the close that produced the batches
        held = [*self._held, *(dataclasses.replace(b, data=encode(b.table)) for b in batches)]
        if not held:
            return
        try:
            self.spool.commit_batches(held, closed_until)
        except (OSError, sqlite3.Error) as exc:
            self._held = held
            self._storage_failed("spool_commit", exc)
            self.spool.reclaim()
            return
        self._held = []
        if self.storage_problems.is_open("spool_commit"):
            self._storage_ok("spool_commit")
        if lost := self.spool.record_carried_loss():
            self.metrics.points_lost.labels("storage").inc(lost)
        for batch in held:
            self.forwarder.remember(batch)
        self._enforce_caps()
        self.forwarder.wake()

    def _storage_failed(self, operation: str, error: BaseException | None) -> None:
        """Count and log (once per outage) a failed write; pause acquisition when memory
        holds more than ``spool.memory_max_bytes`` for want of storage."""
        self.metrics.storage_errors.labels(operation).inc()
        held_bytes = sum(len(b.data or b"") for b in self._held) + self.spool.unlogged_bytes
        self.storage_problems.fail(
            operation,
            "storage failing: data held in memory and retried",
            error=str(error),
            held_bytes=held_bytes,
        )
        self.metrics.points_at_risk.set(self.spool.at_risk_points)
        if held_bytes > self.spool_config.memory_max_bytes:
            self._pause("storage", "storage failing and memory full: acquisition paused")

    def _storage_ok(self, operation: str) -> None:
        self.storage_problems.ok(operation)
        self.metrics.points_at_risk.set(self.spool.at_risk_points)
        if not self.storage_problems.open_keys and not self._held and not self.spool.unlogged:
            self._resume("storage")

    def _pause(self, reason: str, event: str) -> None:
        if reason not in self._paused:
            log.warning(event)
        self._paused.add(reason)
        self._acquiring.clear()

    def _resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            log.info("acquisition resumed", reason=reason)
        if not self._paused:
            self._acquiring.set()

    def _enforce_caps(self) -> None:
        config = self.spool_config
        count, size, oldest = self.spool.size()
        now = time.time_ns()
        age = 0 if oldest is None else now - oldest
        full = size > config.max_bytes or age > config.max_age
        if full and config.overflow == "drop_oldest":
            dropped, points = self.spool.drop_oldest(
                config.max_bytes, config.max_age, now, self.forwarder.in_flight.values()
            )
            self.metrics.points_lost.labels("overflow").inc(points)
            self._spool_problems.fail(
                "overflow",
                "spool full: oldest batches dropped",
                totals={"batches_dropped": dropped, "points_dropped": points},
            )
            count, size, oldest = self.spool.size()
        elif full:
            self._spool_problems.fail("overflow", "spool full: acquisition paused", bytes=size)
            self._pause("overflow", "acquisition paused: the spool is full")
        elif size <= _RESUME_BELOW * config.max_bytes and age <= _RESUME_BELOW * config.max_age:
            self._spool_problems.ok("overflow")
            self._resume("overflow")
        self.metrics.spool_batches.set(count)
        self.metrics.spool_bytes.set(size)
        self.metrics.spool_oldest_age.set(0 if oldest is None else (now - oldest) / 1e9)

    def _delivered(self, batch: Batch) -> None:
        """Every uplink has the batch and the spool let it go."""
        self.batches_written += 1
        self.points_written += batch.points
        if self.on_delivered is not None:
            self.on_delivered(batch)
        if "overflow" in self._paused:
            self._enforce_caps()

    async def _enqueue(self, runner: int, frame: Frame) -> None:
        """Every source's sink: the frame log, then the batcher, in the source's own task.
        (Both are synchronous: a queue and a consumer task in between cost a task switch
        per poll and bought nothing on one event loop.) The runner's slot is looked up
        after the wait: a reload may have renumbered the sources meanwhile."""
        await self._acquiring.wait()  # a full spool, or storage failing with memory full
        self._store_frame(self._slots[runner], frame)

    def _store_frame(self, slot: int, frame: Frame) -> None:
        if not len(frame):
            return
        if self.spool.append_frame(slot, frame):
            if self.storage_problems.is_open("frame_log"):
                self._storage_ok("frame_log")
        else:
            self._storage_failed("frame_log", self.spool.last_error)
        self.batcher.add(slot, frame)

    def health(self) -> dict[str, Any]:
        """Every check by name, "ok" or what is wrong; ``ok`` only when all are."""
        checks: dict[str, str] = {}
        sources: dict[str, bool] = {}
        tasks = self.tasks.problems()
        for runner in self.runners:
            name = runner.config.name
            problem = tasks.get(f"source:{name}") or runner.problem()
            checks[f"source:{name}"] = problem or "ok"
            tasks.pop(f"source:{name}", None)
            sources[name] = problem is None
        max_age_s = self.health_config.uplink_max_age / 1e9
        for uplink in self.uplinks:
            problem = tasks.get(f"uplink:{uplink.name}") or self.forwarder.problem(
                uplink.name, max_age_s
            )
            checks[f"uplink:{uplink.name}"] = problem or "ok"
            tasks.pop(f"uplink:{uplink.name}", None)
        for operation in self.storage_problems.open_keys:
            checks[f"storage:{operation}"] = f"failing: {self.spool.last_error or 'see log'}"
        if self._spool_problems.is_open("overflow"):
            dropping = self.spool_config.overflow == "drop_oldest"
            checks["spool"] = (
                "full: oldest batches dropped" if dropping else "full: acquisition paused"
            )
        for name, problem in tasks.items():
            checks.setdefault(f"task:{name}", problem)
        failed = [name for name, state in checks.items() if state != "ok"]
        return {
            "ok": not failed,
            "failed": failed,
            "checks": checks,
            "sources": sources,
            "uplinks_ok": not any(name.startswith("uplink:") for name in failed),
            "pending_points": self.batcher.pending_points,
            "points_at_risk": self.spool.at_risk_points,
            "batches_written": self.batches_written,
            "quarantine": self._quarantine_summary(),
        }

    def _quarantine_summary(self) -> dict[str, Any]:
        """Poison batches kept on disk (of this run and earlier ones): plant IT's to look at."""
        batches, points = self.forwarder.quarantine.count()
        summary: dict[str, Any] = {"batches": batches, "points": points}
        if batches:
            summary["newest"] = self.forwarder.quarantine.entries(3)
        return summary

    @property
    def paused(self) -> set[str]:
        """Why acquisition waits, if it does: "overflow", "storage"."""
        return set(self._paused)

    def _refresh_gauges(self) -> None:
        """The health gauges and the sources' rates, on the closer's clock (a scrape or a
        status request only reads them)."""
        now = time.monotonic()
        for runner in self.runners:
            self.rates.sample(runner.config.name, runner.points, now)
        self.rates.keep({runner.config.name for runner in self.runners})
        report = self.health()
        for uplink in self.uplinks:
            up = report["checks"][f"uplink:{uplink.name}"] == "ok"
            self.metrics.uplink_up.labels(uplink.name).set(1 if up else 0)
        for name, healthy in report["sources"].items():
            self.metrics.source_healthy.labels(name).set(1 if healthy else 0)
        self.metrics.points_at_risk.set(report["points_at_risk"])
        _, _, oldest = self.spool.size()
        age = 0.0 if oldest is None else (time.time_ns() - oldest) / 1e9
        self.metrics.spool_oldest_age.set(age)

    def _unwell(self) -> dict[str, str]:
        """What withholds the watchdog: tasks failing or stalled (the closer among them).
        A failing device or uplink does not: a restart would not mend it."""
        return {name: p for name, p in self.tasks.problems().items() if name != "watchdog"}

    async def run(self, stop: asyncio.Event, reload: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or a task cannot be kept alive: then ``failed``
        says why), then flush and return. Each time ``reload`` is set (SIGHUP), the
        config file is read again and applied (:meth:`reload`)."""
        log.info(
            "agent started",
            gateway=self.loaded.config.agent.gateway_id,
            sources=len(self.runners),
            tags=len(self.tag_table),
            config=str(self.loaded.path),
            config_hash=self.loaded.config_hash,
        )
        for configured in self.loaded.config.uplinks:
            log.info(
                "uplink",
                uplink=configured.name,
                type=configured.type,
                to=without_credentials(configured.target),
            )
        status = StatusServer(
            self.metrics.registry, self.health, partial(status_document, self), self.reload
        )
        if self.loaded.config.agent.metrics:
            self.tasks.start("status", partial(self._serve_status, status))
        else:
            log.info("no status endpoint (agent.metrics is off): status and reload need it")
        self._recover()
        if reload is not None:
            self.tasks.start("reloader", partial(self._reload_on, reload))
        freeze_long_lived()  # no full collection of all of it in the middle of a poll
        self.tally.started_ns = time.time_ns()  # acquisition starts now, not at __init__
        for runner in self.runners:
            self._start_source(runner)
        period = min(self.batcher.window_ns / 1e9 / 4, 0.25)
        self.tasks.start("closer", partial(self._close_windows, period), max(1.0, 8 * period))
        for uplink in self.uplinks:
            self._start_uplink(uplink)
        self.tasks.start("wide-writer", self._write_wide)
        if (interval := systemd.watchdog_interval_s()) is not None:
            self.tasks.start("watchdog", partial(_feed_watchdog, interval, self._unwell))
        systemd.notify("READY=1")
        try:
            await first_of(stop.wait(), self.tasks.fatal_event.wait())
        finally:
            self.failed = self.tasks.fatal
            log.info("agent stopping", reason=self.failed or "stop requested")
            systemd.notify("STOPPING=1")
            self._stopping = True
            async with self._reload_lock:  # a reload under way finishes first
                pass
            self._paused.clear()
            self._acquiring.set()  # a frame held back by a full spool is kept, not lost
            # nothing is owed from the stop on: stopping the sources takes time (a session's
            # goodbye), during which a stopped poller owes no tick
            self.tally.stop(time.time_ns())
            sources = [f"source:{runner.config.name}" for runner in self.runners]
            await _within(self.tasks.stop(sources), _STOP_SOURCES_S)
            await self.tasks.stop(["closer"])
            for runner in self.runners:  # what deadband/swinging door/features still hold
                self.batcher.add(self._slots[runner.index], runner.pipeline.flush())
            self._publish(self.batcher.flush())
            for wide in self.resampler.flush() if self.resampler is not None else []:
                self._wide.put_nowait(wide)
            await self._drain([f"uplink:{uplink.name}" for uplink in self.uplinks])
            await self.tasks.stop()
            self.uplink_problems.close()
            await status.stop()
            log.info(
                "agent stopped",
                batches_written=self.batches_written,
                points_written=self.points_written,
            )

    def _start_source(self, runner: SourceRunner) -> None:
        self.tasks.start(f"source:{runner.config.name}", partial(_run_source, runner))

    def _start_uplink(self, uplink: Uplink) -> None:
        deadline = self.forwarder.stall_deadline_s(uplink)
        self.tasks.start(f"uplink:{uplink.name}", partial(self.forwarder.run, uplink), deadline)

    # -- reload ---------------------------------------------------------------------------

    async def _reload_on(self, requested: asyncio.Event, heartbeat: Heartbeat) -> None:
        """A reload each time ``requested`` is set (SIGHUP); several at once are one."""
        while True:
            await requested.wait()
            requested.clear()
            await self.reload()

    async def reload(self) -> ReloadResult:
        """Read the config file again and apply it: validated first (a broken file leaves
        the running config as it is), refused whole if it changes a key only a restart
        can (:mod:`agent.ops.reload`); else only the sources and uplinks whose config
        changed are restarted, and the rest never stops. One log line says what happened."""
        async with self._reload_lock:
            # systemd shows the unit "reloading" until READY=1 (as Type=notify-reload wants)
            systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                result = await self._reload()
            finally:
                systemd.notify("READY=1")
        self.last_reload = (time.time_ns(), result)
        return result

    async def _reload(self) -> ReloadResult:
        path = self.loaded.path
        current = self.loaded.config_hash

        def answer(outcome: Any, message: str, config_hash: str = current) -> ReloadResult:
            return ReloadResult(outcome, message, str(path), config_hash)

        if self._stopping:
            return answer("refused", "the agent is stopping")
        try:
            loaded = load_config(path)
            require_writable(path, agent_dirs(loaded.config), keep=True)
        except ConfigError as exc:
            problems = "; ".join(f"{key}: {msg}" if key else msg for key, msg in exc.problems)
            log.error(
                "reload refused: the config is invalid, the running one stays",
                config=str(path),
                problems=problems,
            )
            return answer("invalid", str(exc))
        plan = plan_reload(self.loaded.config, loaded.config)
        if plan.refused:
            log.error(
                "reload refused: keys that only a restart can change; nothing was applied",
                config=str(path),
                keys=plan.refused,
            )
            return answer("refused", "needs a restart: " + "; ".join(plan.refused))
        if plan.unchanged:
            log.info("reload: the config is unchanged", config=str(path), config_hash=current)
            return answer("unchanged", "nothing to change")
        try:  # everything that can fail before anything is stopped
            configs = {source.name: source for source in loaded.config.sources}
            drivers = {name: loaded.drivers[name](configs[name]) for name in plan.sources.started}
            by_name = {uplink.name: uplink for uplink in loaded.config.uplinks}
            uplinks = {name: make_uplink(by_name[name]) for name in plan.uplinks.started}
        except Exception as exc:  # a driver or an uplink that cannot be made: nothing changes
            log.error("reload refused: nothing was applied", error=describe_error(exc))
            return answer("refused", describe_error(exc))
        try:
            await self._apply(loaded, plan, drivers, uplinks)
        except Exception as exc:  # cannot be undone: a restart starts clean on the new file
            log.exception("reload failed halfway: the agent stops, to be started on the new config")
            self.tasks.give_up(f"reload failed halfway: {describe_error(exc)}")
            return answer("refused", f"failed halfway, the agent stops: {describe_error(exc)}")
        changes = plan.summary()
        log.info("reload applied", config=str(path), config_hash=loaded.config_hash, **changes)
        return ReloadResult("applied", "applied", str(path), loaded.config_hash, changes)

    async def _apply(
        self,
        loaded: LoadedConfig,
        plan: ReloadPlan,
        drivers: dict[str, Driver],
        uplinks: dict[str, Uplink],
    ) -> None:
        config = loaded.config
        old = {runner.config.name: runner for runner in self.runners}
        for name in plan.sources.restarted:  # stopped between two polls, then flushed
            runner = old[name]
            if not await runner.ctx.between_polls(_BETWEEN_POLLS_S):
                log.warning("reload: a poll still in flight is cancelled", source=name)
            await self.tasks.discard(f"source:{name}")
            self._store_frame(self._slots[runner.index], runner.pipeline.flush())
        sources = [source for source in config.sources if source.enabled]
        # renumbered at once, between two awaits: no frame sees half of it
        before = {runner.config.name: self._slots[runner.index] for runner in self.runners}
        self.loaded = loaded
        self.sources = sources
        self._retable(sources)
        self._slots = {}
        runners: list[SourceRunner] = []
        started: list[SourceRunner] = []
        for slot, source in enumerate(sources):
            if source.name in plan.sources.kept:
                runner = old[source.name]
                self._slots[runner.index] = slot
            else:  # made after the new table: its driver may describe tags as it is made
                runner = self._runner(source, drivers[source.name], slot)
                if source.name in old:
                    runner.take_over(old[source.name])
                started.append(runner)
            runners.append(runner)
        self.runners = runners
        self.tally.source_moved(
            {
                before[r.config.name]: slot
                for slot, r in enumerate(runners)
                if r.config.name in before
            }
        )
        self.spool.set_layout(self.tag_table.layout())
        for runner in started:
            self._start_source(runner)
        for name in plan.sources.removed:
            forget_series(self.metrics, "source", name)
        self._apply_settings(loaded, plan)
        for name in plan.uplinks.restarted:
            uplink = next(u for u in self.uplinks if u.name == name)
            self.uplinks = [u for u in self.uplinks if u.name != name]  # out of health first
            await self.tasks.discard(f"uplink:{name}")
            self.forwarder.remove(name, replaced=name in plan.uplinks.changed)
            await uplink.close()
        for name in plan.uplinks.removed:
            forget_series(self.metrics, "uplink", name)
        self._bind(list(uplinks.values()))
        for uplink in uplinks.values():
            self.forwarder.add(uplink)
            self._start_uplink(uplink)
        kept = {uplink.name: uplink for uplink in self.uplinks}
        self.uplinks = [uplinks.get(u.name) or kept[u.name] for u in config.uplinks]
        self.forwarder.uplinks = list(self.uplinks)
        if plan.uplinks.restarted or plan.uplinks.added:
            freed = self.spool.set_uplinks([uplink.name for uplink in self.uplinks])
            if freed:
                log.info("reload: batches only removed uplinks still owed let go", batches=freed)
        self.forwarder.wake()

    def _apply_settings(self, loaded: LoadedConfig, plan: ReloadPlan) -> None:
        config = loaded.config
        if "agent.log_level" in plan.settings or "agent.log_format" in plan.settings:
            configure(config.agent.log_level, config.agent.log_format)
        self.spool_config = config.spool
        self.health_config = config.health
        self.forwarder.set_replay_rate(config.spool.replay_rate)
        self._enforce_caps()

    async def _serve_status(self, server: StatusServer, heartbeat: Heartbeat) -> None:
        """The /metrics and /healthz endpoint, tried again until its port is free."""
        listen = self.loaded.config.agent.metrics
        host, _, port = listen.rpartition(":")
        problems = ProblemLog(log)
        rng = random.Random()
        attempt = 0
        while True:
            try:
                self.status_port = await server.start(host.strip("[]"), int(port))
                break
            except OSError as exc:
                problems.fail("status", "metrics endpoint not started", listen=listen, error=exc)
                await asyncio.sleep(backoff_delay(attempt, 1.0, 30.0, rng))
                attempt += 1
        problems.ok("status")
        shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
        log.info(
            "status endpoint listening",
            url=f"http://{shown}:{self.status_port}/",
            paths="/status /metrics /healthz, POST /reload",
        )
        await server.serve_forever()

    def _recover(self) -> None:
        """Put back what the spool held when the agent last stopped (or was killed).
        Frames logged under another config's layout are replayed as the tags they were,
        by name (those no source reads now are retired entries of the tag table)."""
        recovered = self.spool.recover()
        self.batcher.restore(recovered.closed_until)
        self._replay(recovered)
        self.spool.set_layout(self.tag_table.layout())
        self.spool.set_uplinks([uplink.name for uplink in self.uplinks])
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

        if lost := self.spool.record_carried_loss():
            self.metrics.points_lost.labels("storage").inc(lost)
        damage = self.spool.recovery_losses
        if corrupt := damage["spool_corrupt_points"] + damage["frame_log_corrupt_points"]:
            self.metrics.points_lost.labels("spool_corrupt").inc(corrupt)

    def _replay(self, recovered: Recovered) -> None:
        current = self.tag_table.layout()
        foreign: dict[str, list[list[TagEntry]]] = {}
        for layout in recovered.layouts:
            if layout is not None and layout != current and layout not in foreign:
                foreign[layout] = layout_entries(layout)
        if foreign:  # tags of those layouts no source reads now: kept until batched
            known = set(self.tag_table.qualified)
            gone = {
                entry.qualified: entry
                for slots in foreign.values()
                for slot in slots
                for entry in slot
                if entry.qualified not in known
            }
            self._retable(self.sources, list(gone.values()))
        numbering = {
            layout: [self.tag_table.index_of([e.qualified for e in slot]) for slot in slots]
            for layout, slots in foreign.items()
        }
        for (slot, frame), layout in zip(recovered.frames, recovered.layouts, strict=True):
            if layout in numbering:
                self.batcher.add_tagged(numbering[layout][slot][frame.tag], frame)
            else:
                self.batcher.add(slot, frame)

    def _retable(
        self, sources: list[SourceConfig], retired: list[TagEntry] | None = None
    ) -> np.ndarray:
        """A new tag table for ``sources`` (plus ``retired`` entries); everything numbered
        by the old one is moved across by name. Tags that no source reads any more but
        that pending rows or open tallies still hold stay as retired entries until their
        windows are batched. Returns the move (old index -> new, or -1)."""
        old = self.tag_table
        live = {entry.qualified for source in sources for entry in source_entries(source)}
        held = np.union1d(self.batcher.pending_tags(), self.tally.counted_tags())
        carried = [old.entries[g] for g in held.tolist() if old.qualified[g] not in live]
        table = TagTable(sources, [*carried, *(retired or [])])
        moved = table.moved_from(old)
        self.batcher.retable(table, moved, self.loaded.config_hash)
        self.tally.retable(
            table.source_offset,
            table.tag_source,
            table.rate_ns,
            table.live_tags,
            moved,
            _FIRST_SAMPLE_WITHIN_NS + table.rate_ns,
            time.time_ns(),
        )
        if self.resampler is not None:
            self.resampler.retable(table, methods_of(table), moved)
        table.inherit(old)
        self.tag_table = table
        self._bind(self.uplinks)
        return moved

    def _bind(self, uplinks: Sequence[Uplink]) -> None:
        """Tell the uplinks that announce tags (Sparkplug births) the current tag table."""
        config = self.loaded.config
        for uplink in uplinks:
            if isinstance(uplink, GatewayAware):
                uplink.bind(
                    self.tag_table, config.agent.gateway_id, config.agent.data_dir, self.metrics
                )

    async def _drain(self, uplink_tasks: list[str]) -> None:
        """Give the uplinks until the deadline to take what is spooled; the rest stays in
        the spool for the next start."""
        timeout_s = self.spool_config.drain_timeout / 1e9
        deadline = time.monotonic() + timeout_s
        await self.forwarder.drain(timeout_s)
        await self.tasks.stop(uplink_tasks)
        if not await _within(self._wide.join(), max(0.1, deadline - time.monotonic())):
            log.error("resample output flush timed out", unsent_batches=self._wide.qsize())
        for uplink in [*self.uplinks, *self.wide_uplinks]:
            await uplink.close()
        if self._held:
            log.error(
                "storage failing at stop: batches not committed; their frames in the frame "
                "log are replayed at the next start, the samples only memory held are lost "
                "and counted then",
                batches=len(self._held),
                points=sum(batch.points for batch in self._held),
                points_lost=self.spool.at_risk_points,
            )
        unsent, size, _ = self.spool.size()
        if unsent:
            log.warning("batches left in the spool for the next start", batches=unsent, bytes=size)
        self.spool.close()

    async def _close_windows(self, period: float, heartbeat: Heartbeat) -> None:
        gauges_due = 0.0
        while True:
            await asyncio.sleep(period)
            heartbeat.beat()
            late_before = self.batcher.late_points
            self._publish(self.batcher.close_due(time.time_ns()))
            self.metrics.late_points.inc(self.batcher.late_points - late_before)
            if (now := time.monotonic()) >= gauges_due:
                gauges_due = now + _GAUGES_EVERY_S
                self._refresh_gauges()
                memory.trim()

    async def _write_wide(self, heartbeat: Heartbeat) -> None:
        """The resampled output: written with retries, not spooled (it is derived from
        the spooled long form)."""
        rng = random.Random()
        while True:
            heartbeat.rest()
            batch = await self._wide.get()
            heartbeat.beat()
            for uplink in self.wide_uplinks:
                await send_with_retry(
                    uplink, batch, self.uplink_problems, self.metrics, rng, heartbeat
                )
            self._wide.task_done()


async def _run_source(runner: SourceRunner, heartbeat: Heartbeat) -> None:
    await runner.run()


async def _feed_watchdog(
    interval_s: float, unwell: Callable[[], dict[str, str]], heartbeat: Heartbeat
) -> None:
    await systemd.keep_watchdog_fed(interval_s, unwell)


async def _within(awaitable: Awaitable[Any], timeout_s: float) -> bool:
    """Await with a deadline; False if it was not done in time (it is then cancelled)."""
    try:
        await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError:
        return False
    return True
