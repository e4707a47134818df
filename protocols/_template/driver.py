"""A minimal PollingDriver: the shape every poll-style driver has."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from agent.acquisition import quality as q
from agent.ops.metrics import PollStats
from protocols.sdk import (
    Frame,
    PollGroup,
    PollingDriver,
    SourceConfig,
    TagConfig,
    Tick,
)


class TemplateTagConfig(TagConfig):
    signal: Literal["sine", "ramp"] = "sine"
    period: float = Field(default=10.0, gt=0, description="signal period in seconds")


class TemplateSourceConfig(SourceConfig):
    protocol: Literal["template"] = "template"
    amplitude: float = 1.0
    tags: list[TemplateTagConfig] = Field(min_length=1)  # type: ignore[assignment]


class TemplateDriver(PollingDriver):
    config_model = TemplateSourceConfig
    config: TemplateSourceConfig

    def __init__(self, config: TemplateSourceConfig) -> None:
        super().__init__(config)
        tags = config.tags
        self._is_sine = np.array([tag.signal == "sine" for tag in tags])
        self._period_s = np.array([tag.period for tag in tags])

    async def connect(self) -> None:
        """A real driver opens its session here and raises if the device is unreachable."""

    async def close(self) -> None:
        """A real driver releases its session here."""

    async def read(self, group: PollGroup, tick: Tick, stats: PollStats) -> Frame:
        sent = time.time_ns()
        phase = (sent / 1e9 % self._period_s[group.tags]) / self._period_s[group.tags]
        values = (
            np.where(self._is_sine[group.tags], np.sin(2 * np.pi * phase), phase)
            * self.config.amplitude
        )
        received = time.time_ns()
        stats.request_done(received - sent)
        n = group.tags.shape[0]
        return Frame(
            group.tags,
            np.full(n, (sent + received) // 2, np.int64),
            values.astype(np.float64),
            np.full(n, q.GOOD, np.uint16),
            received,
        )
