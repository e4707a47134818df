"""Every installed driver, ours and any integrator's, passes the same conformance suite."""

from __future__ import annotations

import pytest

from protocols.conformance import check_driver
from protocols.registry import installed_protocols, load_driver


def test_bundled_drivers_are_installed() -> None:
    assert {"modbus", "template"} <= set(installed_protocols())


@pytest.mark.parametrize("protocol", installed_protocols())
async def test_driver_conforms(protocol: str) -> None:
    report = await check_driver(load_driver(protocol))
    assert report.frames > 0
    assert report.samples >= report.frames
    if protocol == "opcua":  # its sample config subscribes: the clock probe's round trips
        assert report.clock_readings > 0
    assert report.cancel_seconds < 1.0
