"""MQTT messages to columnar samples: the per-message hot path, and all bad-input handling.

Each distinct received topic is matched against the tags' topic specs once; the result, a
:class:`TopicPlan` grouping the topic's tags by timestamp path and by the JSON object that
holds their values, is cached, so a message costs one dict lookup, one ``json.loads``, one
timestamp parse per group and one subscript per tag. Decoded samples accumulate in column
lists until the driver takes them as one Frame per network read burst.

Hostile or broken input never raises out of :meth:`PayloadDecoder.decode`. Each problem is
counted under a reason, and what happens to the data follows the design rule "flag, do not
silently drop" wherever a sample still exists:

==================  =================================  ==========================================
reason              counted per                        what happens
==================  =================================  ==========================================
oversized           message over ``max_payload``       message dropped unread
malformed_json      message                            message dropped
unmapped_topic      message on a topic no tag matches  message dropped (e.g. a {tag} not configured)
missing_field       configured path absent             value: sample dropped; timestamp: receive
                                                       time, clock-uncertain; quality: uncertain
not_numeric         value that is not a number/bool    kept as bad/decode_error, NaN (a string of
                                                       a tag with ``text = true`` is no error:
                                                       it goes to the text column)
bad_timestamp       unreadable timestamp (per group)   receive time, uncertain + clock-uncertain
absurd_timestamp    time beyond ``max_clock_skew``     receive time, uncertain + clock-uncertain
bad_quality         unreadable quality field           kept as uncertain/decode_error
decoder_bug         message that raised in decode      rest of the message dropped (never expected;
                                                       counted by the driver, not here)
==================  =================================  ==========================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from protocols.mqtt.config import MqttSourceConfig
from protocols.mqtt.jsonpath import MISSING, Path, compile_path, format_path, walk
from protocols.mqtt.session import DECODER_BUG, UNMAPPED_TOPIC
from protocols.mqtt.timestamps import TimestampError, TimestampFormat, timestamp_ns
from protocols.mqtt.topics import TAG_PLACEHOLDER, TopicSpec, minimal_filters

OVERSIZED = "oversized"
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
NOT_NUMERIC = "not_numeric"
BAD_TIMESTAMP = "bad_timestamp"
ABSURD_TIMESTAMP = "absurd_timestamp"
BAD_QUALITY = "bad_quality"
REASONS = (
    OVERSIZED,
    MALFORMED_JSON,
    UNMAPPED_TOPIC,
    MISSING_FIELD,
    NOT_NUMERIC,
    BAD_TIMESTAMP,
    ABSURD_TIMESTAMP,
    BAD_QUALITY,
    DECODER_BUG,
)

_NOT_NUMERIC = q.make(q.BAD, q.Reason.DECODE_ERROR)
_BAD_QUALITY = q.make(q.UNCERTAIN, q.Reason.DECODE_ERROR)
_NO_QUALITY = q.make(q.UNCERTAIN)
_CLOCK_UNCERTAIN = int(q.Flag.CLOCK_UNCERTAIN)
_SOURCE_BAD = q.make(q.BAD, q.Reason.SOURCE_STATUS)
_SOURCE_UNCERTAIN = q.make(q.UNCERTAIN, q.Reason.SOURCE_STATUS)
_QUALITY_WORDS = {
    "good": q.GOOD,
    "ok": q.GOOD,
    "uncertain": _SOURCE_UNCERTAIN,
    "bad": _SOURCE_BAD,
}
_MAX_CACHED_TOPICS = 100_000
_EXAMPLE_CHARS = 120


def quality_word(raw: Any) -> int | None:
    """Quality of a payload's quality field, or None if it cannot be read.

    Booleans (true = good), the words good/ok/uncertain/bad in any case, or an OPC UA
    StatusCode number (severity in the top two bits, as gateways relaying OPC UA send it).
    """
    kind = type(raw)
    if kind is bool:
        return q.GOOD if raw else _SOURCE_BAD
    if kind is int:
        if not 0 <= raw < 1 << 32:
            return None
        severity = raw >> 30
        return q.GOOD if severity == 0 else _SOURCE_UNCERTAIN if severity == 1 else _SOURCE_BAD
    if kind is str:
        return _QUALITY_WORDS.get(raw.strip().lower())
    return None


@dataclass(frozen=True, slots=True)
class TagRule:
    """Where one tag's sample is in a message: compiled paths, ``{tag}`` substituted."""

    tag: int
    spec: TopicSpec
    name: str
    value: Path
    timestamp: Path | None
    quality: Path | None


@dataclass(frozen=True, slots=True)
class ValueSlot:
    """Tags whose values sit in one JSON container: walk to it once, then one subscript each.

    ``keys[i]`` is None when the value is the container itself (a plain-number payload).
    """

    parent: Path
    tags: tuple[int, ...]
    keys: tuple[str | int | None, ...]
    qualities: tuple[Path | None, ...]

    # the keys again when all are object keys and no tag has a quality path (such a slot
    # can take the whole-slot fast path), else empty
    fast_keys: tuple[str, ...] = ()


_NUMBER_TYPES = frozenset({float, int, bool})


@dataclass(frozen=True, slots=True)
class TimeGroup:
    """Tags of a topic that share a timestamp path (None: receive time)."""

    timestamp: Path | None
    slots: tuple[ValueSlot, ...]


@dataclass(frozen=True, slots=True)
class TopicPlan:
    groups: tuple[TimeGroup, ...]


def _substitute(path: Path, name: str) -> Path:
    placeholder = "{" + TAG_PLACEHOLDER + "}"
    return tuple(name if step == placeholder else step for step in path)


def compile_rules(config: MqttSourceConfig) -> list[TagRule]:
    """One rule per configured tag, with the source's defaults filled in."""
    rules = []
    for index, tag in enumerate(config.tags):
        topic = tag.topic or config.topic
        assert topic is not None  # the config model guarantees a topic per tag
        paths: list[Path | None] = []
        for text in (
            tag.value or config.value,
            tag.timestamp or config.timestamp,
            tag.quality or config.quality,
        ):
            paths.append(None if text is None else _substitute(compile_path(text), tag.name))
        value, stamp, quality = paths
        rules.append(TagRule(index, TopicSpec.parse(topic), tag.name, value or (), stamp, quality))
    return rules


def _fast_keys(members: Sequence[TagRule], whole: bool) -> tuple[str, ...]:
    """ValueSlot.fast_keys for a slot's rules."""
    if whole or any(rule.quality is not None for rule in members):
        return ()
    keys = [rule.value[-1] for rule in members]
    strings = tuple(key for key in keys if isinstance(key, str))
    return strings if len(strings) == len(keys) else ()


def plan_for(rules: Sequence[TagRule]) -> TopicPlan:
    """Group a topic's rules by timestamp path, then by the container of their values."""
    groups: dict[Path | None, dict[tuple[Path, bool], list[TagRule]]] = {}
    for rule in rules:
        whole = not rule.value
        parent = rule.value if whole else rule.value[:-1]
        groups.setdefault(rule.timestamp, {}).setdefault((parent, whole), []).append(rule)
    return TopicPlan(
        tuple(
            TimeGroup(
                stamp,
                tuple(
                    ValueSlot(
                        parent,
                        tuple(r.tag for r in members),
                        tuple(None if whole else r.value[-1] for r in members),
                        tuple(r.quality for r in members),
                        _fast_keys(members, whole),
                    )
                    for (parent, whole), members in slots.items()
                ),
            )
            for stamp, slots in groups.items()
        )
    )


class PayloadDecoder:
    """Decodes one source's messages into column lists; never raises on any input."""

    def __init__(self, config: MqttSourceConfig) -> None:
        self.rules = compile_rules(config)
        self._text_tags = {index for index, tag in enumerate(config.tags) if tag.text}
        self._texts: dict[int, str] = {}  # row -> string value, for tags with text = true
        self.max_payload = config.max_payload
        self.max_skew_ns = config.max_clock_skew
        self.timestamp_format: TimestampFormat = config.timestamp_format
        self._exact: dict[str, list[TagRule]] = {}
        self._patterns: list[TagRule] = []
        for rule in self.rules:
            if rule.spec.is_exact:
                self._exact.setdefault(rule.spec.text, []).append(rule)
            else:
                self._patterns.append(rule)
        self._plans: dict[str, TopicPlan] = {}
        self._tags: list[int] = []
        self._times: list[int] = []
        self._stamped: list[tuple[int, int, int]] = []  # (first row, end row, payload time)
        self._values: list[float] = []
        self._qualities: list[int] = []
        self.errors: dict[str, int] = {}  # reason -> occurrences since last taken
        self.examples: dict[str, str] = {}  # reason -> first example since last taken
        self.messages = 0

    def filters(self) -> list[str]:
        """The subscription filters, in tag order, without those another one covers."""
        return minimal_filters([rule.spec.filter for rule in self.rules])

    # -- per message -----------------------------------------------------------------------

    def reject(self, reason: str, topic: str, detail: str) -> None:
        """Count one occurrence of ``reason``, keeping the first example for the log."""
        count = self.errors.get(reason)
        if count is None:
            self.errors[reason] = 1
            self.examples[reason] = f"{topic[:_EXAMPLE_CHARS]}: {detail[:_EXAMPLE_CHARS]}"
        else:
            self.errors[reason] = count + 1

    def _plan(self, topic: str) -> TopicPlan:
        plan = self._plans.get(topic)
        if plan is not None:
            return plan
        rules = list(self._exact.get(topic, ()))
        levels = topic.split("/")
        for rule in self._patterns:
            name = rule.spec.match(levels)
            if name is not None and (rule.spec.tag_level is None or name == rule.name):
                rules.append(rule)
        plan = plan_for(rules)
        if len(self._plans) >= _MAX_CACHED_TOPICS:  # a topic flood must not grow memory
            self._plans.clear()
        self._plans[topic] = plan
        return plan

    def decode(self, topic: str, payload: bytes | bytearray, received: int) -> None:
        """Append the samples of one message; count what is wrong with it."""
        self.messages += 1
        if len(payload) > self.max_payload:
            self.reject(OVERSIZED, topic, f"{len(payload)} bytes > {self.max_payload}")
            return
        plan = self._plan(topic)
        if not plan.groups:
            self.reject(UNMAPPED_TOPIC, topic, "no tag matches this topic")
            return
        try:
            document = json.loads(payload)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            self.reject(MALFORMED_JSON, topic, str(exc))
            return
        for group in plan.groups:
            time_ns, time_quality = self._time(group.timestamp, document, topic, received)
            first = len(self._times)
            for slot in group.slots:
                self._values_of(slot, document, topic, time_ns, time_quality)
            if group.timestamp is not None and time_ns != received and len(self._times) > first:
                self._stamped.append((first, len(self._times), time_ns))

    def _time(self, path: Path | None, document: Any, topic: str, received: int) -> tuple[int, int]:
        """(time, quality flags for it) of a group: payload time, or receive time if unusable."""
        if path is None:
            return received, q.GOOD
        raw = walk(document, path)
        if raw is MISSING:
            self.reject(MISSING_FIELD, topic, f"no timestamp at {format_path(path)}")
            return received, _CLOCK_UNCERTAIN
        try:
            stamp = timestamp_ns(raw, self.timestamp_format)
        except TimestampError as exc:
            self.reject(BAD_TIMESTAMP, topic, str(exc))
            return received, _CLOCK_UNCERTAIN
        if abs(stamp - received) > self.max_skew_ns:
            self.reject(ABSURD_TIMESTAMP, topic, f"{raw!r} is {(stamp - received) / 1e9:.0f} s off")
            return received, _CLOCK_UNCERTAIN
        return stamp, q.GOOD

    def _values_of(
        self, slot: ValueSlot, document: Any, topic: str, time_ns: int, time_quality: int
    ) -> None:
        container = walk(document, slot.parent) if slot.parent else document
        if (
            slot.fast_keys
            and not time_quality
            and type(container) is dict
            and self._all_numbers(container, time_ns, slot)
        ):
            return
        for tag, key, quality_path in zip(slot.tags, slot.keys, slot.qualities, strict=True):
            if key is None:
                raw = container
            elif isinstance(key, str):
                raw = container.get(key, MISSING) if type(container) is dict else MISSING
            elif type(container) is list and -len(container) <= key < len(container):
                raw = container[key]
            else:
                raw = MISSING
            if raw is MISSING:
                where = format_path((*slot.parent, key) if key is not None else slot.parent)
                self.reject(MISSING_FIELD, topic, f"no value at {where}")
                continue
            kind = type(raw)
            quality = q.GOOD
            try:
                value = float(raw) if kind is float or kind is int or kind is bool else None
            except OverflowError:
                value = None
            if value is None and kind is str and tag in self._text_tags:
                self._texts[len(self._tags)] = raw  # a state word ("OPEN"): the text column
                value = float("nan")
                if quality_path is not None:
                    quality = self._quality(quality_path, document, topic)
            elif value is None:
                self.reject(NOT_NUMERIC, topic, f"value {str(raw)[:40]!r} is not a number")
                value, quality = float("nan"), _NOT_NUMERIC
            elif quality_path is not None:
                quality = self._quality(quality_path, document, topic)
            if time_quality:
                quality |= time_quality
                if quality & q.SEVERITY_MASK == q.GOOD:
                    quality |= q.UNCERTAIN
            self._tags.append(tag)
            self._times.append(time_ns)
            self._values.append(value)
            self._qualities.append(quality)

    def _all_numbers(self, container: dict[str, Any], time_ns: int, slot: ValueSlot) -> bool:
        """Fast path, the common case of a many-value message: every key present with a
        number. Appends the whole slot in a few C-level calls and returns True; else False
        (nothing appended) and the per-tag path sorts out each problem."""
        raws: list[Any] = [container.get(key) for key in slot.fast_keys]
        if not set(map(type, raws)) <= _NUMBER_TYPES:
            return False
        try:
            values = list(map(float, raws))
        except OverflowError:  # an integer beyond float range
            return False
        self._values.extend(values)
        self._tags.extend(slot.tags)
        self._times.extend([time_ns] * len(values))
        self._qualities.extend([q.GOOD] * len(values))
        return True

    def _quality(self, path: Path, document: Any, topic: str) -> int:
        raw = walk(document, path)
        if raw is MISSING:
            self.reject(MISSING_FIELD, topic, f"no quality at {format_path(path)}")
            return _NO_QUALITY
        word = quality_word(raw)
        if word is None:
            self.reject(BAD_QUALITY, topic, f"quality {str(raw)[:40]!r} is not understood")
            return _BAD_QUALITY
        return word

    # -- hand-over ----------------------------------------------------------------------------

    def take_frame(self, received: int) -> Frame | None:
        """The samples decoded since the last call as one Frame, or None if there are none."""
        if not self._tags:
            return None
        frame = Frame(
            np.array(self._tags, np.int32),
            np.array(self._times, np.int64),
            np.array(self._values, np.float64),
            np.array(self._qualities, np.uint16),
            received,
        )
        if self._texts:
            frame.text = np.full(len(frame), None, dtype=object)
            frame.text[list(self._texts)] = list(self._texts.values())
            self._texts = {}
        if self._stamped:  # payload times are the publisher's clock: the clock model's input
            frame.source_time = np.zeros(len(frame), np.int64)
            for first, end, stamp in self._stamped:
                frame.source_time[first:end] = stamp
            frame.device_clock = True
            self._stamped = []
        self._tags, self._times, self._values, self._qualities = [], [], [], []
        return frame

    def take_errors(self) -> tuple[dict[str, int], dict[str, str]]:
        """(occurrences by reason, first example by reason) since the last call."""
        errors, examples = self.errors, self.examples
        self.errors, self.examples = {}, {}
        return errors, examples
