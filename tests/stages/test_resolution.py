"""A tag's ``resolution``: values rounded to it after unit conversion, the bound in the
lineage, and the total error with deadband and swinging door (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.acquisition.frame import Frame
from agent.acquisition.pipeline import SourcePipeline, tag_lineage
from agent.config.model import TagConfig
from agent.stages.units import conversion
from tests.stages.helpers import by_tag, joined, split
from tests.stages.test_compression_bounds import series, tolerance

resolutions = st.sampled_from([1e-3, 0.01, 0.05, 0.25, 0.5, 1.0, 2.0, 5.0, 0.3])


def converted(tag: TagConfig, raw: np.ndarray) -> np.ndarray:
    """What the scale stage makes of raw values before rounding, computed apart."""
    a, b = conversion(tag.unit, tag.convert_to) if tag.unit and tag.convert_to else (1.0, 0.0)
    return raw * (tag.scale * a) + (tag.offset * a + b)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e5, 1e5, allow_nan=False), min_size=1, max_size=60),
    resolutions,
    st.sampled_from([(None, None), ("degF", "degC"), ("psi", "bar"), ("in", "mm")]),
    st.floats(0.1, 10),
)
def test_values_are_rounded_to_the_resolution_after_unit_conversion(
    raw: list[float], resolution: float, units: tuple[str | None, str | None], scale: float
) -> None:
    unit, target = units
    tag = TagConfig(
        name="t", unit=unit, convert_to=target, scale=scale, offset=1.5, resolution=resolution
    )
    values = np.asarray(raw)
    out = SourcePipeline([tag]).process(
        Frame(
            np.zeros(len(values), np.int32),
            np.arange(len(values), dtype=np.int64),
            values.copy(),
            np.zeros(len(values), np.uint16),
        )
    )
    truth = converted(tag, values)
    steps = out.value / resolution
    slack = 1e-9 * (np.abs(truth) + resolution)  # floating point, far below the resolution
    assert np.all(np.abs(steps - np.round(steps)) * resolution <= slack), "multiples of it"
    assert np.all(np.abs(out.value - truth) <= resolution / 2 + slack), "within half of it"
    if resolution in (1e-3, 0.01):  # a decimal resolution gives the double nearest the decimal
        places = 3 if resolution == 1e-3 else 2
        assert np.array_equal(out.value, np.round(out.value, places))


def test_nan_of_a_bad_sample_stays_nan_and_tags_without_resolution_are_untouched() -> None:
    tags = [TagConfig(name="a", resolution=0.1), TagConfig(name="b")]
    values = np.array([1.234, np.nan, 1.234, 9.87654321])
    out = SourcePipeline(tags).process(
        Frame(
            np.array([0, 0, 1, 1], np.int32),
            np.arange(4, dtype=np.int64),
            values.copy(),
            np.zeros(4, np.uint16),
        )
    )
    assert out.value[0] == 1.2
    assert np.isnan(out.value[1])
    assert out.value[2:].tolist() == [1.234, 9.87654321]


def test_the_lineage_carries_the_resolution_its_bound_and_the_total_error_bound() -> None:
    tag = TagConfig.model_validate(
        {
            "name": "t",
            "unit": "degF",
            "convert_to": "degC",
            "range": [0, 200],
            "resolution": 0.01,
            "deadband": "0.5%",  # 1.0 of the 200 span
            "swinging_door": {"deviation": 0.2},
        }
    )
    lineage = tag_lineage(tag)
    assert lineage["resolution"] == 0.01
    assert lineage["resolution_error"] == 0.005
    assert lineage["error_bound"] == pytest.approx(0.005 + 2 * 1.0 + 0.2)
    plain = tag_lineage(TagConfig(name="u"))
    assert not {"resolution", "resolution_error", "error_bound"} & set(plain)


@pytest.mark.parametrize("value", [0, -0.01])
def test_a_resolution_must_be_positive(value: float) -> None:
    with pytest.raises(ValidationError, match="resolution"):
        TagConfig.model_validate({"name": "t", "resolution": value})


@settings(max_examples=150, deadline=None)
@given(series(), resolutions, st.floats(0.0, 2.0), st.floats(0.0, 2.0))
def test_resolution_deadband_and_door_hold_the_summed_bound(
    case: tuple[Frame, list[int], list[float]], resolution: float, db_share: float, door: float
) -> None:
    """Every acquired value is within resolution / 2 + 2 * deadband + deviation of the
    linear interpolation between the stored points, the lineage's ``error_bound``."""
    f, cuts, deviations = case
    tags = [
        TagConfig.model_validate(
            {
                "name": f"t{i}",
                "resolution": resolution * d,
                "deadband": d * db_share,
                "swinging_door": {"deviation": d * door} if door else None,
            }
        )
        for i, d in enumerate(deviations)
    ]
    pipeline = SourcePipeline(tags)
    truth = f.value.copy()  # the pipeline rounds the frame's values in place
    kept = joined([*[pipeline.process(part) for part in split(f, cuts)], pipeline.flush()])
    acquired = Frame(f.tag, f.time, truth, f.quality)
    for tag in np.unique(f.tag).tolist():
        bound = tag_lineage(tags[tag])["error_bound"]
        t, v, _ = by_tag(acquired, tag)
        kt, kv, _ = by_tag(kept, tag)
        assert np.isin(kt, t).all(), "kept points are acquired times"
        rel = (t - t[0]).astype(np.float64)
        error = float(np.abs(np.interp(rel, (kt - t[0]).astype(np.float64), kv) - v).max())
        assert error <= bound + tolerance(v, bound)
