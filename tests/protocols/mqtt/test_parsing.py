"""The pure parts of the MQTT driver: JSON paths, timestamps, topic specs, config checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from protocols.mqtt.config import MqttSourceConfig
from protocols.mqtt.jsonpath import MISSING, compile_path, format_path, walk
from protocols.mqtt.timestamps import TimestampError, timestamp_ns
from protocols.mqtt.topics import TopicSpec, covers, minimal_filters

NOW_S = 1_763_700_000  # 2025-11-21, a present-day instant
NOW_NS = NOW_S * 1_000_000_000


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("$", ()),
        ("$.values.TT101", ("values", "TT101")),
        ("$.items[2].v", ("items", 2, "v")),
        ("$['a.b'][\"c d\"]", ("a.b", "c d")),
        ("$.m[-1]", ("m", -1)),
    ],
)
def test_paths_compile_to_keys_and_indices(text: str, steps: tuple[Any, ...]) -> None:
    assert compile_path(text) == steps
    assert compile_path(format_path(steps)) == steps


@pytest.mark.parametrize("text", ["values.x", "$.", "$[x]", "$.a..b", "$.a[1"])
def test_bad_paths_are_refused_with_the_position(text: str) -> None:
    with pytest.raises(ValueError, match="JSON path"):
        compile_path(text)


def test_walk_never_raises_and_tells_missing_from_null() -> None:
    document = {"a": {"b": [1.5, {"c": None}]}, "s": "text"}
    assert walk(document, ("a", "b", 0)) == 1.5
    assert walk(document, ("a", "b", 1, "c")) is None
    assert walk(document, ("a", "b", 5)) is MISSING
    assert walk(document, ("a", 0)) is MISSING  # index into an object
    assert walk(document, ("s", 0)) is MISSING  # index into a string
    assert walk(document, ("a", "b", "c")) is MISSING  # key into a list
    assert walk(3.0, ("x",)) is MISSING


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (NOW_S, NOW_NS),
        (NOW_S * 1000 + 250, NOW_NS + 250_000_000),
        (NOW_S * 1_000_000 + 7, NOW_NS + 7_000),
        (NOW_NS + 3, NOW_NS + 3),
        (NOW_S + 0.5, NOW_NS + 500_000_000),
        ("2025-11-21T04:40:00Z", NOW_NS),
        ("2025-11-21T05:40:00.123456+01:00", NOW_NS + 123_456_000),
        ("2025-11-21T04:40:00.123456789", NOW_NS + 123_456_789),
    ],
)
def test_timestamps_auto_detect_epoch_units_and_read_iso(raw: Any, expected: int) -> None:
    assert timestamp_ns(raw, "auto") == expected


def test_explicit_timestamp_formats() -> None:
    assert timestamp_ns(NOW_S * 1000, "ms") == NOW_NS
    assert timestamp_ns(str(NOW_S * 1000), "ms") == NOW_NS
    assert timestamp_ns(5, "s") == 5_000_000_000  # auto would say seconds too; no guessing
    with pytest.raises(TimestampError):
        timestamp_ns(NOW_S, "iso")


@pytest.mark.parametrize(
    "raw", ["yesterday", True, None, [1], {"t": 1}, float("nan"), float("inf")]
)
def test_unreadable_timestamps_raise_timestamp_error_only(raw: Any) -> None:
    with pytest.raises(TimestampError):
        timestamp_ns(raw, "auto")


def test_topic_specs_match_like_a_broker_and_derive_tag_names() -> None:
    pattern = TopicSpec.parse("plant/{area}/{tag}")
    assert pattern.filter == "plant/+/+"
    assert pattern.match(["plant", "boiler", "PT101"]) == "PT101"
    assert pattern.match(["plant", "boiler"]) is None
    everything = TopicSpec.parse("plant/#")
    assert everything.match(["plant"]) == ""
    assert everything.match(["plant", "a", "b", "c"]) == ""
    assert TopicSpec.parse("#").match(["$SYS", "broker"]) is None
    assert TopicSpec.parse("plant/+/PT101").match(["plant", "x", "PT101"]) == ""
    assert TopicSpec.parse("plant/boiler").is_exact


@pytest.mark.parametrize("topic", ["a/#/b", "a/b+", "a/{tag}/{tag}", "a/x{y}", ""])
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
        TopicSpec.parse(topic)


BASE = {
    "name": "scada",
    "url": "mqtt://127.0.0.1:1883",
    "tags": [{"name": "PT101", "topic": "plant/boiler"}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "http://x"}, "mqtt://host"),
        ({"ca_file": "/ca.pem"}, "need an mqtts:// url"),
        ({"url": "mqtts://h", "certificate": "/c.pem"}, "go together"),
        ({"tags": [{"name": "PT101"}]}, "has no topic"),
        ({"tags": [{"name": "PT101", "topic": "a/#/b"}]}, "last level"),
        ({"value": "values.PT101"}, "JSON path"),
        ({"shared_group": "a/b"}, "share group"),
        ({"username": "gw"}, "password_file or password_env"),
    ],
)
def test_config_mistakes_are_refused_with_a_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MqttSourceConfig.model_validate({**BASE, **change})


def test_tls_url_defaults_and_client_id() -> None:
    config = MqttSourceConfig.model_validate({**BASE, "url": "mqtts://broker.plant"})
    assert (config.tls, config.host, config.port) == (True, "broker.plant", 8883)
    assert config.session_client_id == "edge-agent-scada"


def test_covered_filters_are_not_subscribed_twice() -> None:
    assert covers("a/+/+", "a/+/b")
    assert covers("a/#", "a/b/#")
    assert covers("#", "a")
    assert not covers("a/+", "a/+/b")
    assert not covers("a/+/b", "a/+/+")
    assert minimal_filters(["a/+/b", "a/+/+", "c", "a/+/+", "a/#x"]) == ["a/+/+", "c", "a/#x"]
