"""The driver plug-in API: everything an integrator needs to add a protocol, in one place.

A driver is a class registered under the entry-point group ``edge_agent.protocols``::

    [project.entry-points."edge_agent.protocols"]
    myproto = "my_package:MyDriver"

It declares a pydantic ``config_model`` (a subclass of :class:`SourceConfig`, with tags
subclassing :class:`TagConfig`) and implements ``async run(ctx)``: connect with
``async with``, emit columnar :class:`Frame` objects through ``ctx.emit`` (which applies
backpressure), and return promptly when cancelled. Raising from ``run`` means "this session
failed": the agent's supervisor logs it once, emits a comm-error marker for the source's
tags, backs off with jitter and calls ``run`` again. Retries, statistics, batching and
buffering belong to the agent, never to a driver.

Poll-style protocols subclass :class:`PollingDriver` and implement only ``connect``,
``close`` and ``read``; the absolute-tick scheduler, overrun counting and lateness
statistics come with it. ``protocols/_template/`` is the copy-and-edit starting point and
``protocols.conformance`` checks any driver the same way as ours.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import structlog

from agent.acquisition import quality
from agent.acquisition.frame import Frame
from agent.acquisition.quality import Reason
from agent.acquisition.scheduler import Tick, TickClock, ticks
from agent.config.durations import format_duration
from agent.config.model import SourceConfig, TagConfig
from agent.ops.health import SETTLE_S, ProblemLog
from agent.ops.metrics import Metrics, PollStats

__all__ = [
    "Driver",
    "DriverContext",
    "Frame",
    "PollGroup",
    "PollingDriver",
    "Reason",
    "SourceConfig",
    "TagConfig",
    "Tick",
    "quality",
]


class DriverContext:
    """What the agent hands a running driver: its config, the emit sink, logs and stats."""

    def __init__(
        self,
        config: SourceConfig,
        emit: Callable[[Frame], Awaitable[None]],
        metrics: Metrics | None = None,
        clock: TickClock | None = None,
        data_dir: Path | None = None,
        describe: Callable[[int, str | None, dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        # the gateway's state directory: drivers keep certificates, trust lists... here
        self.data_dir = data_dir or Path("edge-agent-data")
        self.source = config.name
        self.tags: Sequence[TagConfig] = config.tags
        self.log = structlog.get_logger().bind(source=config.name)
        # a flaky device's failures are one episode until it has stayed away SETTLE_S
        self.problems = ProblemLog(self.log, settle_s=SETTLE_S)
        self.metrics = metrics or Metrics()
        self.clock = clock or TickClock()
        self._emit = emit
        self._describe = describe
        self._stats: dict[str, PollStats] = {}
        self._up = self.metrics.source_up.labels(config.name)
        self.connected = False  # a session is up (set by the driver through set_connected)
        self._announced = False
        self._polls = 0  # polls between request and emit
        self._between_polls = asyncio.Event()
        self._between_polls.set()

    async def emit(self, frame: Frame) -> None:
        """Hand a frame to the agent; returns once it is in the frame log (or, while the
        disk refuses writes, held in memory and counted at risk); waits while the agent
        pauses acquisition."""
        await self._emit(frame)

    def describe_tag(self, tag: int, name: str | None, lineage: dict[str, Any]) -> None:
        """Tell the agent what the device said of a tag: its lineage entries (a unit, a data
        type) joined over the config's in every batch from now on, and, for a placeholder
        tag (``SourceConfig.placeholder_tags``), its name. For protocols whose devices
        describe themselves at run time (Sparkplug births); a name must stay the same for
        the data directory's life, as the frame log holds samples by tag number."""
        if self._describe is not None:
            self._describe(tag, name, lineage)

    def poll_stats(self, group: str) -> PollStats:
        stats = self._stats.get(group)
        if stats is None:
            stats = self._stats[group] = PollStats(self.metrics, self.source, group)
        return stats

    @property
    def all_poll_stats(self) -> dict[str, PollStats]:
        return dict(self._stats)

    def set_connected(self, connected: bool) -> None:
        """Drivers call this when a session comes up and when it ends. The first session
        of a run is announced in the log with what the source reads; later ones are in
        the failure's "recovered" line."""
        if connected and not self._announced:
            self._announced = True
            self.log.info(
                "source connected",
                protocol=self.config.protocol,
                endpoint=without_credentials(str(getattr(self.config, "url", ""))),
                tags=len(self.tags),
                rates=rate_summary(self.tags),
            )
        self.connected = connected
        self._up.set(1 if connected else 0)

    @contextmanager
    def polling(self) -> Iterator[None]:
        """Around one poll, from its request to its emit: a reload that restarts the source
        waits until none is in flight (:meth:`between_polls`), so the request a device
        has answered is not cancelled on its way to the frame log."""
        self._polls += 1
        self._between_polls.clear()
        try:
            yield
        finally:
            self._polls -= 1
            if not self._polls:
                self._between_polls.set()

    async def between_polls(self, timeout_s: float) -> bool:
        """Wait until no poll is in flight; True if so (cancel the source right away, with
        no await in between), False if ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._polls:
                    await self._between_polls.wait()
        except TimeoutError:
            return False
        return True


class Driver(ABC):
    """Base of every protocol driver. Subclasses set ``config_model`` and implement ``run``."""

    config_model: ClassVar[type[SourceConfig]] = SourceConfig

    def __init__(self, config: SourceConfig) -> None:
        self.config = config

    @abstractmethod
    async def run(self, ctx: DriverContext) -> None:
        """Acquire data until cancelled; raise to report a failed session."""

    def prepare(self, ctx: DriverContext) -> None:
        """Called once, before the agent recovers its spool and starts sources: restore
        what earlier runs learnt and kept in ``ctx.data_dir`` (e.g. tags named at run
        time, through ``ctx.describe_tag``). Nothing by default."""
        return None

    def probe_address(self) -> tuple[str, int] | None:
        """The TCP ``(host, port)`` the source connects to, or None (a serial line, no
        network peer). While a long reconnect backoff runs, the agent tests this address
        with a bare TCP connect every ``probe_interval`` and retries as soon as a peer that
        refused comes back, instead of waiting out the backoff."""
        return None

    def describe(self) -> str:
        """Extra words for ``edge-agent check`` (e.g. ", 3 block reads per cycle")."""
        return ""

    @classmethod
    def sample_config(cls) -> str:
        """The driver's ``sample.toml``: a complete agent config using this driver."""
        module = inspect.getmodule(cls)
        package = module.__package__ if module is not None else None
        if not package:
            raise LookupError(f"{cls.__name__} is not inside a package with a sample.toml")
        return importlib.resources.files(package).joinpath("sample.toml").read_text()

    @classmethod
    def conformance_peer(cls) -> AbstractAsyncContextManager[dict[str, Any]] | None:
        """A live peer for the conformance suite, or None if the driver needs none.

        The context manager starts something to talk to (a simulator on port 0) and yields
        the keys to override in the sample config's first source (e.g. ``{"url": ...}``).
        """
        return None


def rate_summary(tags: Sequence[TagConfig]) -> str:
    """``"25 @ 100ms, 2 @ 1s"``: how many tags at each rate."""
    counts: dict[int, int] = {}
    for tag in tags:
        counts[tag.rate] = counts.get(tag.rate, 0) + 1
    return ", ".join(f"{n} @ {format_duration(rate)}" for rate, n in sorted(counts.items()))


def without_credentials(url: str) -> str:
    """A URL fit for a log line: a user name and password in it are cut out."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@dataclass(frozen=True, slots=True)
class PollGroup:
    """Tags of one source polled together at one rate."""

    name: str
    period_ns: int
    tags: np.ndarray  # indices into the source's tag table


def groups_by_rate(tags: Sequence[TagConfig]) -> list[PollGroup]:
    """One poll group per distinct tag rate, fastest first, named by the rate ("100ms")."""
    rates = sorted({tag.rate for tag in tags})
    return [
        PollGroup(
            format_duration(rate),
            rate,
            np.array([i for i, tag in enumerate(tags) if tag.rate == rate], np.int32),
        )
        for rate in rates
    ]


class PollingDriver(Driver):
    """Helper for poll-style protocols: connect, read one group per tick, close.

    One task per rate group runs on the absolute-tick scheduler. ``read`` returns the
    group's samples for a tick; device-level errors on part of a group belong in the frame
    as bad-quality samples, while an exception means the connection is gone.
    """

    def poll_groups(self) -> Sequence[PollGroup]:
        return groups_by_rate(self.config.tags)

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise if the device cannot be reached."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection; must not raise."""

    @abstractmethod
    async def read(self, group: PollGroup, tick: Tick, stats: PollStats) -> Frame:
        """Read every tag of ``group`` once, for ``tick``."""

    def session_tasks(self, ctx: DriverContext) -> list[Coroutine[Any, Any, None]]:
        """Extra coroutines to run beside the poll loops for the session's lifetime (e.g. a
        liveness watch that raises when the session dies); none by default."""
        return []

    async def run(self, ctx: DriverContext) -> None:
        await self.connect()
        ctx.set_connected(True)
        try:
            async with asyncio.TaskGroup() as group_tasks:
                for group in self.poll_groups():
                    group_tasks.create_task(self._poll_forever(group, ctx))
                for task in self.session_tasks(ctx):
                    group_tasks.create_task(task)
        finally:
            ctx.set_connected(False)
            await self.close()

    async def _poll_forever(self, group: PollGroup, ctx: DriverContext) -> None:
        stats = ctx.poll_stats(group.name)
        task = asyncio.current_task()
        async for tick in ticks(group.period_ns, ctx.clock):
            stats.poll_started(tick.lateness_ns, tick.skipped)
            with ctx.polling():
                frame = await self.read(group, tick, stats)
                if task is not None and task.cancelling():
                    # a library swallowed our cancellation (asyncio.wait_for on Python 3.11,
                    # CPython gh-86296, used by pymodbus per request): honour it here
                    raise asyncio.CancelledError
                if self.config.snap and not frame.device_clock:
                    frame.time[:] = tick.due_wall_ns  # the actual lateness stays in the stats
                if len(frame):
                    await ctx.emit(frame)
