"""Per-source processing between a driver and the batcher.

Stages run in a fixed order: scale/offset/unit -> range -> spike -> fill -> denoise ->
deadband -> swinging door, with features computed from the cleaned full-rate signal just
before the compression stages (statistics of a thinned series would be biased) and emitted
as derived tags numbered after the source's own tags. Each stage is built only if some tag
uses it, keeps its per-tag state in arrays indexed by tag and is vectorised across tags.
What a tag's stages did is written into every batch as that tag's lineage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.acquisition.frame import Frame, concat
from agent.config.durations import format_duration
from agent.config.model import TagConfig
from agent.stages.base import DropCounter, Stage, no_count
from agent.stages.deadband import DeadbandStage
from agent.stages.features import FeatureStage
from agent.stages.fill import FillStage
from agent.stages.range import RangeStage
from agent.stages.spike import SpikeStage
from agent.stages.swinging_door import SwingingDoorStage
from agent.stages.units import conversion

STAGE_KEYS = (
    "convert_to",
    "resolution",
    "range",
    "range_action",
    "spike",
    "fill",
    "denoise",
    "deadband",
    "swinging_door",
    "features",
)


class ScaleStage:
    """value = raw * scale + offset, then unit conversion, as one multiply-add per frame;
    then, for tags with a ``resolution`` (the instrument's, the historian convention),
    rounded to a multiple of it: digits below the instrument's resolution are noise, and
    they are most of what a float costs to store (issue 17). The stored value is within
    ``resolution / 2`` of the converted one (the lineage's ``resolution_error``), and the
    stages after this one see the rounded value, so their bounds add to it."""

    name = "scale"

    def __init__(self, tags: Sequence[TagConfig]) -> None:
        gain, bias = [], []
        for tag in tags:
            a, b = conversion(tag.unit, tag.convert_to) if tag.unit and tag.convert_to else (1, 0)
            gain.append(tag.scale * a)
            bias.append(tag.offset * a + b)
        self.scale = np.array(gain, np.float64)
        self.offset = np.array(bias, np.float64)
        self.is_identity = bool((self.scale == 1.0).all() and (self.offset == 0.0).all())
        # steps per unit: 1 / resolution, so that 0.01 divides by exactly 100 and the
        # result is the double nearest the decimal (42.1, not 42.100000000000001); 0 = off
        self.steps = np.array([1 / tag.resolution if tag.resolution else 0.0 for tag in tags])
        self.rounds = bool(self.steps.any())

    def process(self, frame: Frame) -> Frame:
        if not len(frame) or (self.is_identity and not self.rounds):
            return frame
        if not self.is_identity:
            frame.value = frame.value * self.scale[frame.tag] + self.offset[frame.tag]
        if self.rounds:
            frame.value = round_to_resolution(frame.value, self.steps[frame.tag])
        return frame


def round_to_resolution(value: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Each value rounded to the nearest multiple of ``1 / steps`` (ties to even), where
    ``steps`` (per value) is not 0; NaN stays NaN."""
    rounding = steps != 0
    if rounding.all():
        return np.round(value * steps) / steps
    out = value.copy()
    out[rounding] = np.round(value[rounding] * steps[rounding]) / steps[rounding]
    return out


def _cleaning_stages(tags: Sequence[TagConfig], count: DropCounter) -> list[Stage]:
    stages: list[Stage] = [ScaleStage(tags)]
    if any(tag.range for tag in tags):
        bounds = [tag.range or (-np.inf, np.inf) for tag in tags]
        stages.append(
            RangeStage(
                [low for low, _ in bounds],
                [high for _, high in bounds],
                [tag.range_action == "drop" for tag in tags],
                [tag.range is not None for tag in tags],
                count,
            )
        )
    spikes = [tag.spike for tag in tags]
    if any(spikes):
        stages.append(
            SpikeStage(
                [(s.max_rate or np.inf) if s else np.inf for s in spikes],
                [s.window if s else 0 for s in spikes],
                [s.threshold if s else 1.0 for s in spikes],
                [s.min_deviation if s else 0.0 for s in spikes],
                [s.action == "drop" if s else False for s in spikes],
                [s is not None for s in spikes],
                count,
            )
        )
    if any(tag.fill for tag in tags):
        stages.append(
            FillStage(
                [tag.rate for tag in tags],
                [tag.fill.max_gap if tag.fill else 0 for tag in tags],
                [tag.fill is not None for tag in tags],
            )
        )
    if any(tag.denoise for tag in tags):
        # deferred: PyWavelets (~3 MiB resident) loads only for a source that denoises
        from agent.stages.denoise import DenoiseStage

        stages.append(DenoiseStage([tag.denoise for tag in tags]))
    return stages


class SourcePipeline:
    """The stages configured for one source, applied to each frame it emits."""

    def __init__(self, tags: Sequence[TagConfig], count: DropCounter = no_count) -> None:
        self.stages = _cleaning_stages(tags, count)
        self.features = (
            FeatureStage([tag.features for tag in tags], len(tags))
            if any(tag.features for tag in tags)
            else None
        )
        self.deadband = None
        if any(tag.deadband for tag in tags):
            self.deadband = DeadbandStage(
                [tag.absolute(tag.deadband.deviation) if tag.deadband else 0.0 for tag in tags],
                [tag.deadband.max_interval if tag.deadband else 0 for tag in tags],
                [tag.deadband is not None for tag in tags],
                count,
            )
        self.swinging_door = None
        if any(tag.swinging_door for tag in tags):
            doors = [tag.swinging_door for tag in tags]
            self.swinging_door = SwingingDoorStage(
                [
                    tag.absolute(d.deviation) if d else 0.0
                    for tag, d in zip(tags, doors, strict=True)
                ],
                [d.max_interval if d else 0 for d in doors],
                [(d.min_interval or 0) if d else 0 for d in doors],
                [d is not None for d in doors],
                count,
            )

    def process(self, frame: Frame) -> Frame:
        for stage in self.stages:
            frame = stage.process(frame)
        derived = self.features.process(frame) if self.features else None
        frame = self._compress(frame)
        return concat([frame, derived]) if derived is not None and len(derived) else frame

    def _compress(self, frame: Frame) -> Frame:
        if self.deadband is not None:
            frame = self.deadband.process(frame)
        if self.swinging_door is not None:
            frame = self.swinging_door.process(frame)
        return frame

    def flush(self) -> Frame:
        """What the stateful stages still hold, e.g. on shutdown, so nothing acquired is lost."""
        parts = []
        if self.deadband is not None:
            parts.append(self._swing(self.deadband.flush()))
        if self.swinging_door is not None:
            parts.append(self.swinging_door.flush())
        if self.features is not None:
            parts.append(self.features.flush())
        parts = [part for part in parts if len(part)]
        return concat(parts) if parts else Frame.empty()

    def _swing(self, frame: Frame) -> Frame:
        return self.swinging_door.process(frame) if self.swinging_door is not None else frame


def tag_lineage(tag: TagConfig) -> dict[str, Any]:
    """What a batch says of one tag: its rate, unit, description, resampling method and
    every processing parameter.

    Defaults are left out (no ``unit``: none; no ``scale``/``offset``: 1 and 0; no
    ``description``: empty; no ``resample``: linear): the
    lineage is repeated in every batch's footer, and at 1,000 tags in 1 s windows the
    spelled-out defaults were half of a batch's bytes."""
    lineage: dict[str, Any] = {"rate": format_duration(tag.rate)}
    if tag.convert_to or tag.unit:
        lineage["unit"] = tag.convert_to or tag.unit
    if tag.description:
        lineage["description"] = tag.description
    if tag.resample_method() != "linear":  # how a wide table (resample, export) fills it
        lineage["resample"] = tag.resample_method()
    if tag.scale != 1.0:
        lineage["scale"] = tag.scale
    if tag.offset != 0.0:
        lineage["offset"] = tag.offset
    if tag.convert_to:
        lineage["source_unit"] = tag.unit
    processing = tag.model_dump(mode="json", include=set(STAGE_KEYS), exclude_none=True)
    if tag.resolution is not None:
        processing["resolution_error"] = tag.resolution / 2
        processing["error_bound"] = error_bound(tag)
    if tag.range is None:
        processing.pop("range_action", None)
    for key in ("deadband", "swinging_door"):
        deviation = getattr(tag, key).deviation if getattr(tag, key) else None
        if isinstance(deviation, str):  # keep the spelling, record the value it resolved to
            processing[key]["deviation"] = tag.absolute(deviation)
            processing[key]["deviation_of_span"] = deviation
    return lineage | processing


def error_bound(tag: TagConfig) -> float:
    """How far linear interpolation between a tag's stored points can be from the values
    it acquired (after scale and unit conversion): half its resolution, plus twice its
    deadband (the previous value is stored on an exception), plus its swinging door's
    deviation; each stage's bound holds for the values the one before it passed on."""
    bound = (tag.resolution or 0.0) / 2
    if tag.deadband is not None:
        bound += 2 * tag.absolute(tag.deadband.deviation)
    if tag.swinging_door is not None:
        bound += tag.absolute(tag.swinging_door.deviation)
    return bound


def derived_tags(tags: Sequence[TagConfig], source: str) -> list[tuple[str, dict[str, Any]]]:
    """Names and lineage of the feature tags, in the order FeatureStage numbers them."""
    derived = []
    for tag in tags:
        if tag.features is None:
            continue
        unit = tag.convert_to or tag.unit
        for stat in tag.features.stats:
            stat_unit = {
                "variance": f"({unit})^2" if unit else None,
                "crest_factor": None,
                "kurtosis": None,
            }.get(stat, unit)
            lineage = {
                "derived_from": f"{source}/{tag.name}",
                "feature": stat,
                "window": format_duration(tag.features.window),
                "stamp": "window start",
            }
            if stat_unit is not None:
                lineage["unit"] = stat_unit
            derived.append((f"{tag.name}.{stat}", lineage))
    return derived
