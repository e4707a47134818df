"""User name and password from the environment; a refused login is logged once and retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import structlog

from simulators.mqtt_broker import PrivateBroker
from tests.conftest import agent_toml
from tests.protocols.mqtt.helpers import broker_or_skip, running_agent, running_driver, wait_for


@pytest_asyncio.fixture
async def locked_broker(tmp_path: Path) -> AsyncIterator[PrivateBroker]:
    async with broker_or_skip(tmp_path / "broker", users={"gateway": "s3cret"}) as broker:
        yield broker


async def test_password_from_the_environment_logs_in(
    locked_broker: PrivateBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", "s3cret")
    source = {
        "url": locked_broker.url,
        "mqtt_version": locked_broker.mqtt_version(),
        "username": "gateway",
        "password_env": "MQTT_PASSWORD",
        "topic": "plant/x",
        "tags": [{"name": "x"}],
    }
    async with running_driver(source) as (_, collector):
        assert collector.connected


async def test_wrong_password_fails_clearly_once_and_keeps_retrying(
    tmp_path: Path, locked_broker: PrivateBroker
) -> None:
    secret = tmp_path / "password"
    secret.write_text("Wr0ng-S3cret\n")  # not a word of the test's paths
    source = (
        f'[[sources]]\nname = "scada"\nprotocol = "mqtt"\nurl = "{locked_broker.url}"\n'
        f'mqtt_version = "{locked_broker.mqtt_version()}"\n'
        f'username = "gateway"\npassword_file = "{secret}"\n'
        'backoff_initial = "100ms"\nbackoff_max = "200ms"\ntopic = "plant/x"\n'
        '[[sources.tags]]\nname = "x"\n'
    )
    with structlog.testing.capture_logs() as logs:
        async with running_agent(agent_toml(tmp_path / "store", source)) as agent:
            await wait_for(lambda: agent.runners[0].failures >= 3)
            await asyncio.sleep(0)
    failures = [entry for entry in logs if entry["event"] == "source failed"]
    assert len(failures) == 1
    assert "refused the connection" in failures[0]["error"]
    assert "Wr0ng-S3cret" not in str(logs), "the password is never logged"
