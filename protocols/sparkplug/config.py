"""Config model of a Sparkplug B source and its tags.

A source subscribes to one namespace filter: ``group``, ``edge_node`` and ``device`` are
names or ``+`` (any). Tags are mapped explicitly, by metric name as the birth certificate
spells it (``metric = "Line1/Spindle/Speed"``, on the source's edge node and device unless
the tag names its own), or automatically: ``auto_tags = true`` gives every metric of the
matched nodes and devices a tag, filtered by ``include``/``exclude`` globs over the
metric's path ``<edge node>/<device>/<metric>`` (``<edge node>/<metric>`` for the node's
own metrics). Automatic tags occupy ``auto_tag_slots`` reserved places in the source's tag
table, named when their metric is first born and remembered across restarts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config.durations import Duration
from agent.config.model import TagConfig
from protocols.mqtt.config import MqttSubscriberConfig
from protocols.sparkplug.schema import MISSING_PROTOBUF, protobuf_installed

ANY = "+"
SLOT_PREFIX = "_auto."  # names of the reserved places of automatic tags, until named


def _level(value: str) -> str:
    """One topic level: a name without '/', '#' or '+' inside, or '+' alone."""
    if value != ANY and (not value or set(value) & set("/+#")):
        raise ValueError(f"expected a name without '/', '+' or '#', or '+' for any; got {value!r}")
    return value


class SparkplugTagConfig(TagConfig):
    metric: str | None = Field(
        default=None, description="the metric's name in the birth certificate"
    )
    edge_node: str | None = Field(default=None, description="default: the source's")
    device: str | None = Field(
        default=None,
        description='default: the source\'s device; "" for a metric of the edge node itself',
    )
    sample_interval: Duration | None = Field(
        default=None, description="spacing of an array metric's elements; default: rate"
    )
    auto_slot: int | None = Field(
        default=None, description="set by the driver on reserved automatic tags; never in TOML"
    )

    @field_validator("edge_node")
    @classmethod
    def _node(cls, value: str | None) -> str | None:
        return None if value is None else _level(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        return value if value in (None, "") else _level(value or "")


class SparkplugSourceConfig(MqttSubscriberConfig):
    """Connection and session keys as an ``mqtt`` source; the namespace filter; the tags."""

    protocol: Literal["sparkplug"] = "sparkplug"
    group: str = Field(default=ANY, description="Sparkplug group id, or + for any")
    edge_node: str = Field(default=ANY, description="edge node id, or + for any")
    device: str = Field(default=ANY, description="device id, or + for any")
    auto_tags: bool = Field(default=False, description="a tag for every matched metric")
    include: list[str] = Field(default_factory=lambda: ["*"], description="path globs")
    exclude: list[str] = Field(
        default_factory=lambda: ["*/Node Control/*"], description="path globs"
    )
    auto_tag_slots: int = Field(
        default=1000, ge=1, le=100_000, description="most automatic tags this source keeps"
    )
    sample_interval: Duration | None = Field(
        default=None, description="element spacing of automatic array tags; default: rate"
    )
    rebirth_requests: bool = Field(
        default=False,
        description="opt-in: ask a node whose birth is missing, or after a sequence gap, to "
        "rebirth (NCMD Node Control/Rebirth): a write to the edge node, the only thing "
        "this source then publishes",
    )
    max_clock_skew: Duration = Field(
        default=86_400_000_000_000,
        description="a metric time further than this from receive time is absurd",
    )
    max_payload: int = Field(default=4 * 1024 * 1024, ge=1, description="bytes; larger dropped")
    tags: list[SparkplugTagConfig] = Field(default_factory=list)  # type: ignore[assignment]

    _levels = field_validator("group", "edge_node", "device")(_level)

    @model_validator(mode="after")
    def _tags_and_slots(self) -> SparkplugSourceConfig:
        if not protobuf_installed():
            raise ValueError(MISSING_PROTOBUF)
        explicit = [tag for tag in self.tags if tag.auto_slot is None]
        for tag in self.tags:
            if tag.auto_slot is not None and not tag.name.startswith(SLOT_PREFIX):
                raise ValueError(f"tag {tag.name!r}: auto_slot is the driver's, not a config key")
        for tag in explicit:
            if tag.metric is None:
                raise ValueError(f"tag {tag.name!r} has no metric (the name in the birth)")
            if tag.name.startswith(SLOT_PREFIX):
                raise ValueError(f"tag names starting {SLOT_PREFIX!r} are reserved")
        if not explicit and not self.auto_tags:
            raise ValueError("no tags: map metrics with [[sources.tags]] or set auto_tags = true")
        # the reserved places are made again on every validation (a dumped config holds them)
        self.tags[:] = explicit + [
            SparkplugTagConfig(name=f"{SLOT_PREFIX}{slot:05d}", auto_slot=slot)
            for slot in range(self.auto_tag_slots if self.auto_tags else 0)
        ]
        return self

    @property
    def placeholder_tags(self) -> int:
        return self.auto_tag_slots if self.auto_tags else 0

    @property
    def explicit_tags(self) -> list[SparkplugTagConfig]:
        return [tag for tag in self.tags if tag.auto_slot is None]
