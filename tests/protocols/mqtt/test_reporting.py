"""Bad payloads: counted by reason in Prometheus, logged once, "recovered" when quiet."""

from __future__ import annotations

import pytest
import structlog

from agent.acquisition.frame import Frame
from protocols.mqtt import driver as mqtt_driver
from protocols.mqtt.config import MqttSourceConfig
from protocols.mqtt.driver import MqttDriver
from protocols.sdk import DriverContext


async def _discard(frame: Frame) -> None:
    """Frames are not looked at here."""


def test_each_reason_is_counted_logged_once_and_closed_after_a_quiet_spell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = MqttSourceConfig.model_validate(
        {"name": "s", "url": "mqtt://127.0.0.1", "topic": "t", "tags": [{"name": "x"}]}
    )
    driver = MqttDriver(config)
    ctx = DriverContext(config, _discard)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            for _ in range(4):
                driver.decoder.decode("t", b"{", 1)
            driver._report_errors(ctx)
        monkeypatch.setattr(mqtt_driver, "_QUIET_S", -1.0)
        driver._report_errors(ctx)
    value = ctx.metrics.registry.get_sample_value(
        "edge_agent_payload_errors_total", {"source": "s", "reason": "malformed_json"}
    )
    assert value == 12
    assert [(e["event"], e["problem"]) for e in logs] == [
        ("bad payload", "payload:malformed_json"),
        ("recovered", "payload:malformed_json"),
    ]
    assert logs[0]["example"].startswith("t: ")
