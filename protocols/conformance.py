"""The conformance suite: the checks every installed driver must pass, ours or an integrator's.

``await check_driver(DriverClass)`` runs the driver's ``sample.toml`` against its
conformance peer (a simulator the driver provides, see ``Driver.conformance_peer``) and
raises :class:`ConformanceError` naming the first rule broken:

1. the sample config parses and uses the driver;
2. the driver delivers frames, and every frame is well-formed (dtypes, lengths, tag range,
   positive UTC times, defined quality severity);
3. ``run()`` ends within 1 s of cancellation;
4. no task the driver started outlives it.

``tests/protocols/test_conformance.py`` runs it over every entry point in the
``edge_agent.protocols`` group, so installing a driver package puts it under the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from agent.acquisition.frame import Frame, FrameError
from agent.config.load import ConfigError, parse_config
from protocols.sdk import Driver, DriverContext

CANCEL_DEADLINE_S = 1.0


class ConformanceError(AssertionError):
    """A driver broke one of the suite's rules."""


@dataclass
class ConformanceReport:
    protocol: str
    frames: int  # frames with samples
    samples: int
    cancel_seconds: float
    clock_readings: int = 0  # rowless frames that only carry a round-trip clock reading


async def check_driver(driver: type[Driver], run_seconds: float = 1.5) -> ConformanceReport:
    try:
        loaded = parse_config(tomllib.loads(driver.sample_config()), Path("sample.toml"))
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise ConformanceError(f"sample.toml does not validate: {exc}") from exc
    sources = [s for s in loaded.config.sources if loaded.drivers[s.name] is driver]
    if not sources:
        raise ConformanceError("sample.toml has no source using this driver")
    source = sources[0]
    peer = driver.conformance_peer()
    async with peer if peer is not None else contextlib.nullcontext({}) as overrides:
        if overrides:
            raw = {**source.model_dump(), **overrides}
            source = driver.config_model.model_validate(raw)
        frames: list[Frame] = []

        async def collect(frame: Frame) -> None:
            frames.append(frame)

        baseline = asyncio.all_tasks()
        state = tempfile.TemporaryDirectory(prefix="edge-agent-conformance-")
        ctx = DriverContext(source, collect, data_dir=Path(state.name))
        task = asyncio.create_task(driver(source).run(ctx))
        await asyncio.sleep(run_seconds)
        if task.done():
            error = task.exception()
            raise ConformanceError(f"run() ended on its own before cancellation: {error!r}")
        started = time.monotonic()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=CANCEL_DEADLINE_S)
        cancel_seconds = time.monotonic() - started
        if not done:
            raise ConformanceError(f"run() still running {CANCEL_DEADLINE_S} s after cancel")
        await asyncio.sleep(0.05)  # let callbacks scheduled by close() finish
        state.cleanup()
        leaked = {t for t in asyncio.all_tasks() - baseline if not t.done()}
        leaked.discard(asyncio.current_task())
        if leaked:
            names = ", ".join(sorted(t.get_name() for t in leaked))
            raise ConformanceError(f"tasks left running after run() ended: {names}")
    for number, frame in enumerate(frames):
        try:
            frame.check(len(source.tags))
        except FrameError as exc:
            raise ConformanceError(f"frame {number} is malformed: {exc}") from exc
        if not len(frame) and not (frame.requested and frame.sent):
            # a frame without samples is only worth emitting as a clock probe's round trip
            raise ConformanceError(f"frame {number} has neither samples nor a clock reading")
    data = [frame for frame in frames if len(frame)]
    if not data:
        raise ConformanceError(f"no frame with samples emitted in {run_seconds} s")
    return ConformanceReport(
        source.protocol,
        len(data),
        sum(len(f) for f in data),
        cancel_seconds,
        clock_readings=len(frames) - len(data),
    )
