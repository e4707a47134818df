"""Config model of an MQTT source and its tags.

A tag says where its samples come from: a ``topic`` (exact, with ``+``/``#`` wildcards, or a
pattern such as ``plant/{area}/{tag}`` whose ``{tag}`` segment must equal the tag's name),
and JSON paths for ``value``, ``timestamp`` and ``quality`` inside the payload. The source
may set the same four keys as defaults for all its tags, and ``{tag}`` in a default path
stands for each tag's name, so a hundred values of one JSON message need one line per tag::

    topic = "plant/boiler/values"
    value = "$.values.{tag}"
    timestamp = "$.ts"
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config.durations import Duration
from agent.config.model import MqttConnection, SourceConfig, TagConfig
from protocols.mqtt.jsonpath import compile_path
from protocols.mqtt.timestamps import TimestampFormat
from protocols.mqtt.topics import TopicSpec


def _check_path(value: str | None) -> str | None:
    if value is not None:
        compile_path(value)
    return value


def _check_topic(value: str | None) -> str | None:
    if value is not None:
        TopicSpec.parse(value)
    return value


class MqttTagConfig(TagConfig):
    topic: str | None = Field(default=None, description="default: the source's topic")
    value: str | None = Field(
        default=None, description='JSON path, e.g. "$.values.TT101"; default: the whole payload'
    )
    timestamp: str | None = Field(default=None, description="JSON path; default: receive time")
    quality: str | None = Field(default=None, description="JSON path of a quality/status field")
    text: bool = Field(
        default=False, description='string values ("OPEN") go to the text column, not errors'
    )

    _topic = field_validator("topic")(_check_topic)
    _paths = field_validator("value", "timestamp", "quality")(_check_path)


class MqttSubscriberConfig(SourceConfig, MqttConnection):
    """What every source that subscribes to a broker has: the connection (url, TLS,
    credentials from :class:`MqttConnection`), the session and the subscription's QoS.
    :class:`protocols.mqtt.session.MqttSession` needs nothing more; the ``mqtt`` and
    ``sparkplug`` drivers add how payloads map to tags. The client id defaults to
    ``edge-agent-<source name>``."""

    mqtt_version: Literal["3.1.1", "5"] = "5"
    clean_session: bool = Field(
        default=True, description="false: persistent session, QoS 1/2 queued while away"
    )
    session_expiry: Duration = Field(
        default=86_400_000_000_000, description="MQTT 5: how long the broker keeps the session"
    )
    qos: Literal[0, 1, 2] = 1
    shared_group: str | None = Field(
        default=None, description="subscribe as $share/<group>/<filter> (load sharing)"
    )
    max_payload: int = Field(default=256 * 1024, ge=1, description="bytes; larger is dropped")

    @property
    def reports_on_change(self) -> bool:
        return True  # publishers send when they like: nothing is owed per rate

    @field_validator("shared_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and (not value or set(value) & set("/+#")):
            raise ValueError(f"a share group name has no '/', '+' or '#', got {value!r}")
        return value

    @property
    def session_client_id(self) -> str:
        return self.client_id or f"edge-agent-{self.name}"


class MqttSourceConfig(MqttSubscriberConfig):
    protocol: Literal["mqtt"] = "mqtt"
    # defaults for tags that leave them unset; "{tag}" in a path is the tag's name
    topic: str | None = None
    value: str | None = None
    timestamp: str | None = None
    quality: str | None = None
    timestamp_format: TimestampFormat = Field(
        default="auto", description="auto: epoch s/ms/us/ns by magnitude, or ISO 8601 text"
    )
    max_clock_skew: Duration = Field(
        default=86_400_000_000_000,
        description="a payload time further than this from receive time is absurd",
    )
    tags: list[MqttTagConfig] = Field(min_length=1)  # type: ignore[assignment]

    _topic = field_validator("topic")(_check_topic)
    _paths = field_validator("value", "timestamp", "quality")(_check_path)

    @model_validator(mode="after")
    def _consistent(self) -> MqttSourceConfig:
        for tag in self.tags:
            if (tag.topic or self.topic) is None:
                raise ValueError(f"tag {tag.name!r} has no topic (set it on the tag or source)")
        return self
