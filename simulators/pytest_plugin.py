"""pytest fixtures for the bundled simulators, registered as a pytest plugin.

Installing edge-agent makes them available in any test suite (an integrator's included):

    async def test_my_flow(modbus_plc):
        url = f"modbus+tcp://127.0.0.1:{modbus_plc.port}"
        ...

    async def test_my_opcua_flow(opcua_cnc):
        url = opcua_cnc.url  # opc.tcp://127.0.0.1:<port>/edge-agent/cnc
        ...

Each fixture starts its device on a free loopback port and stops it after the test.
Needs pytest-asyncio (the ``test`` extra).
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from simulators.modbus_plc import ModbusPLCSimulator

if TYPE_CHECKING:  # imported in the fixture: asyncua is heavy and only OPC UA tests need it
    from simulators.opcua_cnc import OpcUaCncSimulator

# The plugin loads in every pytest run of the environment: without pytest-asyncio it must
# stay silent instead of breaking someone else's test session.
if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def modbus_plc() -> AsyncIterator[ModbusPLCSimulator]:
        """The Modbus CNC PLC simulator (seed 7) on 127.0.0.1 and a free port."""
        async with ModbusPLCSimulator(seed=7) as simulator:
            yield simulator

    @pytest_asyncio.fixture
    async def opcua_cnc() -> AsyncIterator[OpcUaCncSimulator]:
        """The OPC UA CNC simulator (seed 7, no security) on 127.0.0.1 and a free port."""
        from simulators.opcua_cnc import OpcUaCncSimulator

        async with OpcUaCncSimulator(seed=7) as simulator:
            yield simulator
