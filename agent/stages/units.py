"""Engineering-unit conversion as one affine map per tag, from a small table.

A table rather than pint: the agent needs a few dozen plant units and an affine
``y = a * x + b`` per tag that folds into the scale/offset multiply-add, not a general
dimensional-analysis engine on the hot path. Each unit is (family, factor, offset) to the
family's SI unit: ``si = x * factor + offset``; only temperatures have an offset.
"""

from __future__ import annotations

from typing import NamedTuple


class Unit(NamedTuple):
    family: str
    factor: float
    offset: float = 0.0


_INCH = 0.0254
_FOOT = 0.3048
_US_GALLON = 3.785411784e-3
_MINUTE = 60.0
_HOUR = 3600.0

UNITS: dict[str, Unit] = {
    # length (m)
    "m": Unit("length", 1.0),
    "km": Unit("length", 1e3),
    "cm": Unit("length", 1e-2),
    "mm": Unit("length", 1e-3),
    "um": Unit("length", 1e-6),
    "µm": Unit("length", 1e-6),
    "in": Unit("length", _INCH),
    "mil": Unit("length", _INCH / 1000),
    "ft": Unit("length", _FOOT),
    "yd": Unit("length", 0.9144),
    # temperature (K)
    "K": Unit("temperature", 1.0),
    "degC": Unit("temperature", 1.0, 273.15),
    "degF": Unit("temperature", 5 / 9, 273.15 - 32 * 5 / 9),
    "degR": Unit("temperature", 5 / 9),
    # pressure (Pa)
    "Pa": Unit("pressure", 1.0),
    "hPa": Unit("pressure", 1e2),
    "kPa": Unit("pressure", 1e3),
    "MPa": Unit("pressure", 1e6),
    "mbar": Unit("pressure", 1e2),
    "bar": Unit("pressure", 1e5),
    "psi": Unit("pressure", 6894.757293168361),
    "atm": Unit("pressure", 101325.0),
    "mmHg": Unit("pressure", 133.322387415),
    "inH2O": Unit("pressure", 249.08891),
    # volumetric flow (m3/s)
    "m3/s": Unit("flow", 1.0),
    "m3/h": Unit("flow", 1 / _HOUR),
    "L/s": Unit("flow", 1e-3),
    "L/min": Unit("flow", 1e-3 / _MINUTE),
    "L/h": Unit("flow", 1e-3 / _HOUR),
    "gpm": Unit("flow", _US_GALLON / _MINUTE),
    "cfm": Unit("flow", _FOOT**3 / _MINUTE),
    # linear speed (m/s)
    "m/s": Unit("speed", 1.0),
    "mm/s": Unit("speed", 1e-3),
    "m/min": Unit("speed", 1 / _MINUTE),
    "mm/min": Unit("speed", 1e-3 / _MINUTE),
    "km/h": Unit("speed", 1 / 3.6),
    "in/min": Unit("speed", _INCH / _MINUTE),
    "ft/s": Unit("speed", _FOOT),
    "ft/min": Unit("speed", _FOOT / _MINUTE),
    "mph": Unit("speed", 0.44704),
    "kn": Unit("speed", 1852 / _HOUR),
    # rotational speed (rad/s)
    "rad/s": Unit("rotational_speed", 1.0),
    "rpm": Unit("rotational_speed", 2 * 3.141592653589793 / _MINUTE),
    "Hz": Unit("rotational_speed", 2 * 3.141592653589793),
}


class UnitError(ValueError):
    """An unknown unit, or two units of different families."""


def conversion(source: str, target: str) -> tuple[float, float]:
    """``(a, b)`` with ``target_value = a * source_value + b``; raises UnitError."""
    for name in (source, target):
        if name not in UNITS:
            raise UnitError(f"unknown unit {name!r}; known units: {', '.join(UNITS)}")
    a, b = UNITS[source], UNITS[target]
    if a.family != b.family:
        raise UnitError(f"cannot convert {source!r} ({a.family}) to {target!r} ({b.family})")
    return a.factor / b.factor, (a.offset - b.offset) / b.factor
