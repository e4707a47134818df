"""PayloadDecoder as a pure function: mapping rules, and properties over hostile input."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.acquisition import quality as q
from protocols.mqtt.config import MqttSourceConfig
from protocols.mqtt.mapping import REASONS, PayloadDecoder
from simulators.mqtt_scada import FAULTS, broken

NOW = 1_763_700_000_000_000_000
TAGS = ("PT101", "TT101", "LT101")


def decoder(**source: Any) -> PayloadDecoder:
    tags = source.pop("tags", [{"name": name} for name in TAGS])
    return PayloadDecoder(
        MqttSourceConfig.model_validate(
            {"name": "s", "url": "mqtt://127.0.0.1", "tags": tags, **source}
        )
    )


def rows(decoder: PayloadDecoder) -> list[tuple[int, int, float, int]]:
    frame = decoder.take_frame(NOW)
    if frame is None:
        return []
    frame.check(len(decoder.rules))
    return list(
        zip(
            frame.tag.tolist(),
            frame.time.tolist(),
            frame.value.tolist(),
            frame.quality.tolist(),
            strict=True,
        )
    )


def test_one_json_message_carries_many_tags_with_its_timestamp_and_quality() -> None:
    d = decoder(topic="p/json/boiler", value="$.values.{tag}", timestamp="$.ts", quality="$.q")
    payload = {"ts": NOW // 1_000_000 + 5, "values": {"PT101": 42.5, "TT101": 254, "LT101": True}}
    d.decode("p/json/boiler", json.dumps({**payload, "q": "good"}).encode(), NOW)
    d.decode("p/json/boiler", json.dumps({**payload, "q": 0x80000000}).encode(), NOW)
    stamp = NOW + 5_000_000
    bad = q.make(q.BAD, q.Reason.SOURCE_STATUS)
    assert rows(d) == [
        (0, stamp, 42.5, q.GOOD),
        (1, stamp, 254.0, q.GOOD),
        (2, stamp, 1.0, q.GOOD),
        (0, stamp, 42.5, bad),
        (1, stamp, 254.0, bad),
        (2, stamp, 1.0, bad),
    ]
    assert d.take_errors() == ({}, {})


def test_plain_numbers_pattern_names_and_wildcards() -> None:
    d = decoder(
        tags=[
            {"name": "PT101", "topic": "p/plain/{tag}"},
            {"name": "TT101", "topic": "p/plain/{tag}"},
            {"name": "LT101", "topic": "p/+/LT101", "value": "$.v", "timestamp": "$.t"},
        ]
    )
    d.decode("p/plain/TT101", b" 71.25\n", NOW)
    d.decode("p/plain/UNKNOWN", b"1", NOW)  # {tag} is not a configured tag
    d.decode("p/zone9/LT101", b'{"v": 3, "t": "2025-11-21T04:40:00.5Z"}', NOW)
    assert rows(d) == [(1, NOW, 71.25, q.GOOD), (2, 1_763_700_000_500_000_000, 3.0, q.GOOD)]
    assert d.take_errors()[0] == {"unmapped_topic": 1}
    assert d.filters() == ["p/plain/+", "p/+/LT101"]


def test_bad_fields_are_flagged_or_dropped_and_counted_by_reason() -> None:
    d = decoder(topic="t", value="$.values.{tag}", timestamp="$.ts", max_clock_skew="1h")
    d.decode("t", b'{"ts": 1, "values": {"PT101": "n/a", "TT101": 2}}', NOW)
    d.decode("t", b'{"values": {"PT101": 1e999, "TT101": 2, "LT101": 3}}', NOW)
    d.decode("t", b'{"ts": "soon", "values": {}}', NOW)
    d.decode("t", b"[[[" * 50_000, NOW)
    d.decode("t", b"\xff\xfe", NOW)
    got = rows(d)
    clock = q.make(q.UNCERTAIN, flags=q.Flag.CLOCK_UNCERTAIN)
    assert [(tag, time == NOW) for tag, time, _, _ in got] == [(0, True), (1, True)] + [
        (i, True) for i in range(3)
    ]
    assert math.isnan(got[0][2])
    assert got[0][3] == q.make(q.BAD, q.Reason.DECODE_ERROR, q.Flag.CLOCK_UNCERTAIN)
    assert got[1][3] == clock
    assert got[2][2] == math.inf  # 1e999 is valid JSON for infinity: kept; range checks judge
    errors, examples = d.take_errors()
    assert errors == {
        "absurd_timestamp": 1,
        "not_numeric": 1,
        "missing_field": 1 + 1 + 3,  # LT101; the ts; all three values of the empty object
        "bad_timestamp": 1,
        "malformed_json": 2,
    }
    assert examples["not_numeric"] == "t: value 'n/a' is not a number"


def test_oversized_payloads_are_dropped_unread() -> None:
    d = decoder(topic="t", max_payload=100)
    d.decode("t", b"1" * 101, NOW)
    d.decode("t", b"7", NOW)
    assert [value for _, _, value, _ in rows(d)] == [7.0, 7.0, 7.0]
    assert d.take_errors()[0] == {"oversized": 1}


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from(["t", "t/x", "p/plain/PT101", "$SYS/x"]), payload=st.binary())
def test_arbitrary_bytes_never_raise(topic: str, payload: bytes) -> None:
    d = decoder(topic="t", value="$.values.{tag}", timestamp="$.ts", quality="$.q")
    d.decode(topic, payload, NOW)
    rows(d)  # well-formed frame, if any
    assert set(d.take_errors()[0]) <= set(REASONS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(document=st.dictionaries(st.sampled_from(["ts", "values", "q", "x"]), json_values))
def test_arbitrary_json_documents_never_raise(document: dict[str, Any]) -> None:
    d = decoder(topic="t", value="$.values.{tag}", timestamp="$.ts", quality="$.q")
    d.decode("t", json.dumps(document).encode(), NOW)
    got = rows(d)
    assert all(quality & q.SEVERITY_MASK != 0xC000 for *_, quality in got)
    assert len(got) <= len(TAGS)


message_plans = st.lists(
    st.tuples(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3),
        st.sampled_from((None, *FAULTS["json"])),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(plan=message_plans)
def test_counters_match_the_faults_sent_and_good_messages_flow(
    plan: list[tuple[list[float], str | None]],
) -> None:
    d = decoder(topic="t", value="$.values.{tag}", timestamp="$.ts")
    sent: dict[str, int] = {}
    good_values: list[float] = []
    for values, fault in plan:
        document = {"ts": NOW // 1_000_000, "values": dict(zip(TAGS, values, strict=True))}
        if fault is None:
            d.decode("t", json.dumps(document).encode(), NOW)
            good_values += values
        else:
            d.decode("t", broken("json", document, fault), NOW)
            sent[fault] = sent.get(fault, 0) + 1
    got = rows(d)
    assert d.take_errors()[0] == sent
    good = [value for _, time, value, quality in got if quality == q.GOOD and time == NOW]
    # every value of every good message arrived, in order (faulty ones may add more)
    it = iter(good)
    assert all(any(v == g for g in it) for v in good_values)
    assert np.isfinite(good).all()


def test_state_words_of_text_tags_go_to_the_text_column() -> None:
    d = decoder(
        topic="t",
        value="$.{tag}",
        tags=[{"name": "XV101", "text": True}, {"name": "PT101"}],
    )
    d.decode("t", b'{"XV101": "OPEN", "PT101": 42.0}', NOW)
    d.decode("t", b'{"XV101": 1, "PT101": "CLOSED"}', NOW)
    frame = d.take_frame(NOW)
    assert frame is not None
    assert frame.text is not None
    assert frame.text.tolist() == ["OPEN", None, None, None]
    assert frame.value[1:3].tolist() == [42.0, 1.0]
    assert math.isnan(frame.value[0])
    assert math.isnan(frame.value[3])
    assert frame.quality.tolist() == [q.GOOD, q.GOOD, q.GOOD, q.make(q.BAD, q.Reason.DECODE_ERROR)]
    assert d.take_errors()[0] == {"not_numeric": 1}  # only the string of a numeric tag
    d.decode("t", b'{"XV101": 0, "PT101": 1}', NOW)
    next_frame = d.take_frame(NOW)
    assert next_frame is not None
    assert next_frame.text is None
