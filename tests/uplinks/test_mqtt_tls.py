"""The mqtt uplink and the collector over TLS with client certificates, and with a login:
the connection keys are the MQTT source's, so the same PEM files and secrets work. The
uplink and the collector speak MQTT 5 only: these tests skip on a broker without it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agent.config.model import MqttUplinkConfig
from agent.uplinks.mqtt import MqttUplink
from simulators.mqtt_broker import BrokerTls, Feature, PrivateBroker
from tests.protocols.mqtt.helpers import broker_or_skip, needs_broker
from tests.protocols.mqtt.test_mqtt_tls import Pki
from tests.uplinks.helpers import (
    canonical,
    collect_config,
    make_batches,
    running,
    samples_of,
    stored,
    wait_for,
)

pytestmark = needs_broker(Feature.MQTT5)


@pytest_asyncio.fixture
async def tls_broker(tmp_path: Path) -> AsyncIterator[tuple[PrivateBroker, Pki]]:
    pki = Pki(tmp_path / "pki")
    tls = BrokerTls(pki.ca, *pki.server, require_certificate=True)
    async with broker_or_skip(tmp_path / "broker", tls=tls) as broker:
        yield broker, pki


async def test_uplink_and_collector_over_mutual_tls(
    tls_broker: tuple[PrivateBroker, Pki], tmp_path: Path
) -> None:
    broker, pki = tls_broker
    keys = {
        "url": broker.tls_url("localhost"),
        "ca_file": str(pki.ca),
        "certificate": str(pki.client[0]),
        "private_key": str(pki.client[1]),
    }
    batches = make_batches(windows=2)
    store = tmp_path / "central"
    config = collect_config(keys["url"], {"type": "parquet", "path": str(store)}, "c1")
    config = config.model_copy(update={"broker": config.broker.model_copy(update=keys)})
    async with running(config) as collector:
        sender = MqttUplink(MqttUplinkConfig.model_validate(keys))
        for batch in batches:
            await sender.send(batch)
        await wait_for(lambda: collector.batches == len(batches))
        await sender.close()
    assert canonical(stored(store).to_table()).equals(samples_of(batches))


async def test_uplink_with_an_untrusted_ca_refuses_to_send(
    tls_broker: tuple[PrivateBroker, Pki],
) -> None:
    broker, pki = tls_broker
    sender = MqttUplink(
        MqttUplinkConfig(
            url=broker.tls_url("localhost"),
            ca_file=pki.other_ca,
            certificate=pki.client[0],
            private_key=pki.client[1],
        )
    )
    with pytest.raises(ConnectionError, match="certificate"):
        await sender.send(make_batches(windows=1)[0])


async def test_uplink_logs_in_with_a_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    async with broker_or_skip(tmp_path / "broker", users={"gw": "s3cret"}) as broker:
        good = MqttUplink(MqttUplinkConfig(url=broker.url, username="gw", password_file=secret))
        await good.send(make_batches(windows=1)[0])  # no subscriber needed for a PUBACK
        await good.close()
        secret.write_text("wrong\n")
        bad = MqttUplink(MqttUplinkConfig(url=broker.url, username="gw", password_file=secret))
        with pytest.raises(ConnectionError, match="refused"):
            await bad.send(make_batches(windows=1)[0])
