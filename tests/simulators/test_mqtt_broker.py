"""The private broker factory: which broker EDGE_AGENT_MQTT_BROKER picks, and amqtt's
restart on the same port (the fallback must behave like mosquitto where it can)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.mqtt_broker import (
    BROKER_ENV,
    AmqttBroker,
    Feature,
    MosquittoBroker,
    broker_class,
    private_broker,
)
from simulators.mqtt_scada import connect_publisher
from tests.protocols.mqtt.helpers import wait_for


@pytest.mark.parametrize("broker", [AmqttBroker, MosquittoBroker])
def test_the_variable_forces_a_broker(
    monkeypatch: pytest.MonkeyPatch, broker: type[AmqttBroker | MosquittoBroker]
) -> None:
    if not broker.available():
        pytest.skip(f"{broker.name} is not installed")
    monkeypatch.setenv(BROKER_ENV, broker.name)
    assert broker_class() is broker


def test_an_unknown_broker_name_is_refused_with_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BROKER_ENV, "hbmqtt")
    with pytest.raises(ValueError, match=r"\['amqtt', 'mosquitto'\]"):
        private_broker(Path("unused"))


def test_the_fallback_names_what_it_lacks() -> None:
    assert AmqttBroker.mqtt_version() == "3.1.1"
    assert MosquittoBroker.mqtt_version() == "5"
    assert MosquittoBroker.lacks(*Feature) is None
    assert AmqttBroker.lacks(Feature.MQTT5) == "the amqtt broker lacks MQTT 5"


async def test_amqtt_restarts_on_the_same_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if not AmqttBroker.available():
        pytest.skip("amqtt is not installed")
    monkeypatch.setenv(BROKER_ENV, "amqtt")
    async with private_broker(tmp_path / "broker") as broker:
        port = broker.port
        await broker.restart()
        assert broker.port == port
        publisher = await connect_publisher(broker.url, mqtt_version=broker.mqtt_version())
        info = publisher.client.publish("t", b"1", qos=1)
        await wait_for(info.is_published)  # paho marks the info on the PUBACK
        await publisher.close()
