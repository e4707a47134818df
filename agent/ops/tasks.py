"""Supervision of the agent's long-lived tasks: none may die or stall silently.

Each task (closer, forwarders, resample writer, status server, watchdog, sources) runs under
a :class:`TaskSupervisor`. An exception that escapes a task is logged with its traceback
the first time (repeats of a crash loop are only counted), counted in
``edge_agent_task_failures_total{task}``, and the task is started again after a backoff.
A task that keeps failing (``max_failures`` within ``failure_window_s``) cannot be kept
alive: the supervisor sets :attr:`TaskSupervisor.fatal`, the agent stops, flushes what it
can and exits non-zero, so that systemd's ``Restart=on-failure`` starts it afresh instead of
leaving it running crippled.

A task may also hang without failing: awaiting something that never comes. Tasks that can
report progress hold a :class:`Heartbeat`; one that has not beaten within its own deadline
while busy is stalled. The systemd watchdog is fed only while no task is failing or stalled
(:meth:`TaskSupervisor.problems` is empty), so a stall ends in a restart by systemd.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter

from agent.acquisition.backoff import backoff_delay
from agent.acquisition.supervisor import describe_error

log = structlog.get_logger()


class Heartbeat:
    """A task's sign of progress. ``beat`` while working; ``rest`` before waiting for work
    that may legitimately not come for a long time (a forwarder with nothing to send)."""

    __slots__ = ("deadline_s", "idle", "last")

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.last = time.monotonic()
        self.idle = False

    def beat(self) -> None:
        self.last = time.monotonic()
        self.idle = False

    def rest(self) -> None:
        self.last = time.monotonic()
        self.idle = True

    def stalled_for(self, now: float) -> float | None:
        """Seconds since the last beat if that is past the deadline while busy, else None."""
        if self.idle:
            return None
        silent = now - self.last
        return silent if silent > self.deadline_s else None


@dataclass(slots=True)
class _Task:
    name: str
    run: Callable[[Heartbeat], Awaitable[None]]
    heartbeat: Heartbeat
    finishes: bool = False  # returning is its normal end, not a failure
    task: asyncio.Task[None] | None = None
    failing_since: float | None = None  # monotonic time of the first failure of a run
    error: str = ""
    failures: deque[float] = field(default_factory=deque)


class TaskSupervisor:
    """Starts tasks, restarts them when they fail, and says which are unwell."""

    def __init__(
        self,
        failures: Counter,
        max_failures: int = 5,
        failure_window_s: float = 60.0,
        healthy_after_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
    ) -> None:
        self._failures = failures
        self.max_failures = max_failures
        self.failure_window_s = failure_window_s
        self.healthy_after_s = healthy_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._tasks: dict[str, _Task] = {}
        self._rng = random.Random()
        self.fatal: str | None = None
        self.fatal_event = asyncio.Event()

    def start(
        self,
        name: str,
        run: Callable[[Heartbeat], Awaitable[None]],
        deadline_s: float = float("inf"),
        finishes: bool = False,
    ) -> Heartbeat:
        """Run ``run(heartbeat)`` under supervision. A task that never beats should keep
        the default deadline (it cannot stall, only fail). A task that ``finishes`` may
        return (it is done then); any other long-lived task returning is a failure."""
        entry = _Task(name, run, Heartbeat(deadline_s), finishes)
        self._tasks[name] = entry
        entry.task = asyncio.create_task(self._keep(entry), name=name)
        return entry.heartbeat

    def problems(self) -> dict[str, str]:
        """Tasks that are failing (crashed and not yet healthy again) or stalled."""
        now = time.monotonic()
        found: dict[str, str] = {}
        for name, entry in self._tasks.items():
            if entry.failing_since is not None:
                found[name] = f"failing: {entry.error}"
            elif entry.task is not None and entry.task.done() and not entry.finishes:
                found[name] = "ended"
            elif (silent := entry.heartbeat.stalled_for(now)) is not None:
                found[name] = f"stalled: no progress for {silent:.1f} s"
        return found

    async def stop(self, names: list[str] | None = None) -> None:
        """Cancel the named tasks (all by default) and wait for them to end."""
        chosen = [self._tasks[n] for n in names] if names is not None else self._tasks.values()
        tasks = [entry.task for entry in chosen if entry.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def give_up(self, reason: str) -> None:
        """The agent cannot go on as it is (a reload failed halfway): it stops, exit 1."""
        self.fatal = reason
        self.fatal_event.set()

    async def discard(self, name: str) -> None:
        """Stop a task for good (a reload took its source or uplink out, or replaces it)."""
        await self.stop([name])
        del self._tasks[name]

    def task(self, name: str) -> asyncio.Task[None] | None:
        entry = self._tasks.get(name)
        return entry.task if entry is not None else None

    async def _keep(self, entry: _Task) -> None:
        attempt = 0
        while True:
            entry.heartbeat.beat()
            run = asyncio.ensure_future(entry.run(entry.heartbeat))
            try:
                if entry.failing_since is not None:
                    done, _ = await asyncio.wait({run}, timeout=self.healthy_after_s)
                    if not done:
                        self._recovered(entry)
                        attempt = 0
                await run
                if entry.finishes:
                    return
                error: BaseException = RuntimeError("the task returned")
            except asyncio.CancelledError:
                run.cancel()
                raise
            except Exception as exc:  # a crashed task is restarted, never lost
                error = exc
            if self._failed(entry, error):
                return
            await asyncio.sleep(
                backoff_delay(attempt, self.backoff_initial_s, self.backoff_max_s, self._rng)
            )
            attempt += 1

    def _failed(self, entry: _Task, error: BaseException) -> bool:
        """Log and count a failure; True if the task is given up (the agent must exit)."""
        now = time.monotonic()
        self._failures.labels(entry.name).inc()
        entry.error = describe_error(error)
        entry.failures.append(now)
        while entry.failures and now - entry.failures[0] > self.failure_window_s:
            entry.failures.popleft()
        if entry.failing_since is None:
            entry.failing_since = now
            log.error("task failed: restarting it", task=entry.name, exc_info=error)
        if len(entry.failures) < self.max_failures:
            return False
        self.fatal = (
            f"task {entry.name} failed {len(entry.failures)} times in "
            f"{self.failure_window_s:.0f} s: {entry.error}"
        )
        log.critical("task cannot be kept alive: the agent exits", task=entry.name)
        self.fatal_event.set()
        return True

    def _recovered(self, entry: _Task) -> None:
        assert entry.failing_since is not None
        log.info(
            "recovered",
            problem=f"task {entry.name}",
            lasted_s=round(time.monotonic() - entry.failing_since, 3),
            failures=len(entry.failures),
        )
        entry.failing_since = None
        entry.error = ""


async def first_of(*waits: Awaitable[Any]) -> None:
    """Wait until the first of ``waits`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
