"""Unit conversion: one known conversion per family, folded with scale/offset; config errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from agent.acquisition.pipeline import SourcePipeline
from agent.config.load import ConfigError, parse_config
from agent.stages.units import UNITS, UnitError, conversion
from protocols._template.driver import TemplateTagConfig
from tests.stages.helpers import T0, frame


@pytest.mark.parametrize(
    ("source", "target", "value", "expected"),
    [
        ("in", "mm", 1.0, 25.4),
        ("ft", "m", 10.0, 3.048),
        ("degF", "degC", 212.0, 100.0),
        ("degF", "degC", -40.0, -40.0),
        ("degC", "K", 0.0, 273.15),
        ("K", "degF", 0.0, -459.67),
        ("psi", "bar", 14.5037738, 1.0),
        ("bar", "kPa", 1.0, 100.0),
        ("gpm", "L/min", 1.0, 3.785411784),
        ("m3/h", "L/s", 3.6, 1.0),
        ("mph", "km/h", 1.0, 1.609344),
        ("in/min", "mm/s", 60.0, 25.4),
        ("rpm", "rad/s", 60.0, 2 * np.pi),
    ],
)
def test_conversion_per_family(source: str, target: str, value: float, expected: float) -> None:
    a, b = conversion(source, target)
    assert a * value + b == pytest.approx(expected, rel=1e-7, abs=1e-9)
    back_a, back_b = conversion(target, source)
    assert back_a * expected + back_b == pytest.approx(value, rel=1e-7, abs=1e-9)


def test_every_family_has_a_round_trip_through_its_si_unit() -> None:
    families = {unit.family for unit in UNITS.values()}
    assert families == {"length", "temperature", "pressure", "flow", "speed", "rotational_speed"}
    for name, unit in UNITS.items():
        si = next(n for n, u in UNITS.items() if u.family == unit.family and u.factor == 1.0)
        a, b = conversion(name, si)
        c, d = conversion(si, name)
        assert c * (a * 123.4 + b) + d == pytest.approx(123.4), name


def test_incompatible_and_unknown_units_raise() -> None:
    with pytest.raises(UnitError, match="cannot convert 'in' \\(length\\) to 'bar'"):
        conversion("in", "bar")
    with pytest.raises(UnitError, match="unknown unit 'furlong'"):
        conversion("furlong", "m")


def test_the_pipeline_applies_scale_offset_then_the_conversion() -> None:
    tags = [
        TemplateTagConfig(name="t", unit="degF", convert_to="degC", scale=0.1, offset=32.0),
        TemplateTagConfig(name="plain"),
    ]
    out = SourcePipeline(tags).process(frame([0, 1], [T0, T0], [1800.0, 7.0]))
    assert out.value.tolist() == pytest.approx([100.0, 7.0])  # 1800 * 0.1 + 32 = 212 degF


def _config(tag: str) -> str:
    return f'[[sources]]\nname = "s"\nprotocol = "template"\n[[sources.tags]]\nname = "x"\n{tag}\n'


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        (
            'unit = "in"\nconvert_to = "bar"',
            "test.toml: sources[0].tags[0].convert_to: cannot convert 'in' (length) to 'bar'",
        ),
        (
            'unit = "inch"\nconvert_to = "mm"',
            "test.toml: sources[0].tags[0].convert_to: unknown unit 'inch'",
        ),
        (
            'convert_to = "mm"',
            "test.toml: sources[0].tags[0].convert_to: convert_to needs the tag's unit",
        ),
    ],
)
def test_unit_errors_name_the_key(tag: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(tomllib.loads(_config(tag)), Path("test.toml"))
    assert str(error.value).startswith(message)


def test_an_unknown_unit_without_conversion_is_just_a_label() -> None:
    loaded = parse_config(tomllib.loads(_config('unit = "N.m"')), Path("test.toml"))
    assert loaded.config.sources[0].tags[0].unit == "N.m"
