"""pytest fixtures for the bundled simulators, registered as a pytest plugin.

Installing edge-agent makes them available in any test suite (an integrator's included):

    async def test_my_flow(modbus_plc):
        url = f"modbus+tcp://127.0.0.1:{modbus_plc.port}"
        ...

    async def test_my_opcua_flow(opcua_cnc):
        url = opcua_cnc.url  # opc.tcp://127.0.0.1:<port>/edge-agent/cnc
        ...

    async def test_my_mqtt_flow(mqtt_broker, mqtt_scada):
        url = mqtt_broker.url  # mqtt://127.0.0.1:<port>, a private broker
        version = mqtt_broker.mqtt_version()  # "5", or "3.1.1" on amqtt
        ...

Each fixture starts its device on a free loopback port and stops it after the test.
Needs pytest-asyncio (the ``test`` extra). The MQTT broker is mosquitto when installed,
else amqtt (the ``test`` extra; ``EDGE_AGENT_MQTT_BROKER=amqtt`` forces it, see
``simulators.mqtt_broker``); with neither, the MQTT fixtures skip the test.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from simulators.modbus_plc import ModbusPLCSimulator
from simulators.mqtt_broker import PrivateBroker, broker_class, private_broker

if TYPE_CHECKING:  # imported in the fixtures: asyncua and paho only load for their tests
    from simulators.mqtt_scada import MqttScadaSimulator
    from simulators.opcua_cnc import OpcUaCncSimulator

# The plugin loads in every pytest run of the environment: without pytest-asyncio it must
# stay silent instead of breaking someone else's test session.
if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest
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

    @pytest_asyncio.fixture
    async def mqtt_broker(tmp_path: Path) -> AsyncIterator[PrivateBroker]:
        """A private broker (anonymous) on 127.0.0.1 and a free port: mosquitto, or amqtt."""
        if broker_class() is None:
            pytest.skip("no MQTT broker (mosquitto or amqtt) is installed")
        async with private_broker(tmp_path / "broker") as broker:
            yield broker

    @pytest_asyncio.fixture
    async def mqtt_scada(mqtt_broker: PrivateBroker) -> AsyncIterator[MqttScadaSimulator]:
        """The SCADA publisher (seed 7, every shape, 100 ms ticks) on ``mqtt_broker``."""
        from simulators.mqtt_scada import MqttScadaSimulator

        simulator = MqttScadaSimulator(seed=7, mqtt_version=mqtt_broker.mqtt_version())
        await simulator.start(mqtt_broker.url)
        try:
            yield simulator
        finally:
            await simulator.stop()
