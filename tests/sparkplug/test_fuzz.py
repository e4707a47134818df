"""Fuzzing the Sparkplug payload decoder and its birth handling (acceptance 3 of issue 18):
whatever arrives, nothing escapes ``decode``, every frame it builds is well-formed, and
each kind of bad message is counted under its reason, once per message (or per metric,
where the reason is about one metric)."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.sparkplug.config import SparkplugSourceConfig
from protocols.sparkplug.decoder import SparkplugDecoder
from protocols.sparkplug.schema import DataType, payload_class
from protocols.sparkplug.store import BirthStore, TagCatalogue
from protocols.sparkplug.values import is_known

Payload = payload_class()
SLOTS = 40
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW_MS = 1_800_000_000_000
TYPES = ["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "STATE", "XDATA"]


def decoder(folder: Path) -> tuple[SparkplugDecoder, SparkplugSourceConfig]:
    config = SparkplugSourceConfig.model_validate(
        {
            "name": "fuzz",
            "url": "mqtt://127.0.0.1:1",
            "group": "G",
            "auto_tags": True,
            "auto_tag_slots": SLOTS,
            "max_payload": 4096,
            "max_clock_skew": "1h",
            "tags": [{"name": "explicit", "metric": "m0", "device": "d0"}],
        }
    )
    decoder = SparkplugDecoder(config)
    catalogue = TagCatalogue(folder / "fuzz.tags", SLOTS)
    decoder.attach(BirthStore(folder / "fuzz"), catalogue, lambda tag, name, lineage: None)
    return decoder, config


def check_frame(decoder: SparkplugDecoder, config: SparkplugSourceConfig) -> None:
    frame = decoder.take_frame(NOW_MS * 1_000_000)
    if frame is not None:
        frame.check(len(config.tags))


datatypes = st.one_of(st.sampled_from(list(DataType)), st.integers(0, 2**32 - 1))
metric_values = st.one_of(
    st.builds(lambda v: ("int_value", v), st.integers(0, 2**32 - 1)),
    st.builds(lambda v: ("long_value", v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: ("float_value", v), st.floats(width=32)),
    st.builds(lambda v: ("double_value", v), st.floats()),
    st.builds(lambda v: ("boolean_value", v), st.booleans()),
    st.builds(lambda v: ("string_value", v), st.text(max_size=20)),
    st.builds(lambda v: ("bytes_value", v), st.binary(max_size=40)),
    st.just(("", None)),
)


@st.composite
def metrics(draw: Any) -> dict[str, Any]:
    metric: dict[str, Any] = {}
    if draw(st.booleans()):
        metric["name"] = draw(st.sampled_from(["m0", "m1", "a/b", "bdSeq", "", "x" * 200]))
    if draw(st.booleans()):
        metric["alias"] = draw(st.integers(0, 8))
    if draw(st.booleans()):
        metric["datatype"] = draw(datatypes)
    if draw(st.booleans()):
        metric["timestamp"] = draw(
            st.one_of(st.integers(0, 2**64 - 1), st.integers(NOW_MS - 10_000, NOW_MS + 10_000))
        )
    metric["is_null"] = draw(st.booleans())
    metric["is_historical"] = draw(st.booleans())
    field, value = draw(metric_values)
    if field:
        metric[field] = value
    return metric


@st.composite
def messages(draw: Any) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(TYPES))
    node = draw(st.sampled_from(["n0", "n1"]))
    device = draw(st.sampled_from(["d0", "d1"]))
    levels = ["spBv1.0", "G", kind, node] + ([device] if kind[0] == "D" else [])
    if draw(st.integers(0, 20)) == 0:
        levels = levels[: draw(st.integers(1, len(levels)))]
    if draw(st.integers(0, 10)) == 0:
        return "/".join(levels), draw(st.binary(max_size=64))
    payload = Payload(seq=draw(st.integers(0, 2**64 - 1)))
    if draw(st.booleans()):
        payload.timestamp = draw(st.integers(0, 2**64 - 1))
    for spec in draw(st.lists(metrics(), max_size=6)):
        payload.metrics.add(**spec)
    return "/".join(levels), payload.SerializeToString()


@FUZZ
@given(st.lists(messages(), max_size=25))
def test_nothing_escapes_and_frames_are_well_formed(sequence: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        fuzzed, config = decoder(Path(folder))
        for topic, data in sequence:
            fuzzed.decode(topic, data, NOW_MS * 1_000_000)
            check_frame(fuzzed, config)
        # what it kept restores into a fresh decoder without a fault either
        again, _ = decoder(Path(folder))
        assert again.take_frame(NOW_MS * 1_000_000) is None, "a replayed birth gives no samples"


@FUZZ
@given(st.binary(min_size=1, max_size=200))
def test_bytes_that_are_not_a_payload_count_as_malformed(data: bytes) -> None:
    try:
        Payload.FromString(data)
    except Exception:
        parses = False
    else:
        parses = True
    with tempfile.TemporaryDirectory() as folder:
        fuzzed, config = decoder(Path(folder))
        fuzzed.decode("spBv1.0/G/NDATA/n0", data, NOW_MS * 1_000_000)
        check_frame(fuzzed, config)
        errors, _ = fuzzed.take_errors()
        if parses:
            assert errors.get("malformed") is None
            assert errors.get("no_birth") == 1, "a payload, but no birth before it"
        else:
            assert errors == {"malformed": 1}


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 5), datatypes), min_size=1, max_size=10))
def test_births_count_unknown_types_and_duplicate_aliases(specs: list[tuple[int, int]]) -> None:
    birth = Payload(seq=0)
    for index, (alias, datatype) in enumerate(specs):
        birth.metrics.add(name=f"m{index}", alias=alias, datatype=datatype)
    unknown = sum(1 for _, datatype in specs if not is_known(datatype))
    aliases = [alias for alias, datatype in specs if is_known(datatype)]
    twice = {alias for alias in aliases if aliases.count(alias) > 1}
    with tempfile.TemporaryDirectory() as folder:
        fuzzed, config = decoder(Path(folder))
        fuzzed.decode("spBv1.0/G/NBIRTH/n0", birth.SerializeToString(), NOW_MS * 1_000_000)
        check_frame(fuzzed, config)
        errors, _ = fuzzed.take_errors()
        assert errors.get("unknown_datatype", 0) == unknown
        assert errors.get("duplicate_alias", 0) == len(twice)
        # data by every alias: the doubled ones reach nothing, counted once for the message
        data = Payload(seq=1)
        for alias in sorted(set(aliases)):
            data.metrics.add(alias=alias, double_value=1.0, timestamp=NOW_MS)
        fuzzed.decode("spBv1.0/G/NDATA/n0", data.SerializeToString(), NOW_MS * 1_000_000)
        check_frame(fuzzed, config)
        errors, _ = fuzzed.take_errors()
        assert errors.get("no_birth", 0) == (1 if twice else 0)
        assert "sequence_gap" not in errors


@FUZZ
@given(st.lists(st.integers(0, 255), min_size=2, max_size=20))
def test_every_sequence_jump_is_counted(seqs: list[int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        fuzzed, _ = decoder(Path(folder))
        birth = Payload(seq=seqs[0])
        birth.metrics.add(name="m1", alias=1, datatype=DataType.Double, double_value=0.0)
        fuzzed.decode("spBv1.0/G/NBIRTH/n0", birth.SerializeToString(), NOW_MS * 1_000_000)
        for seq in seqs[1:]:
            data = Payload(seq=seq)
            data.metrics.add(alias=1, double_value=1.0)
            fuzzed.decode("spBv1.0/G/NDATA/n0", data.SerializeToString(), NOW_MS * 1_000_000)
        jumps = sum(1 for a, b in itertools.pairwise(seqs) if b != (a + 1) % 256)
        errors, _ = fuzzed.take_errors()
        assert errors.get("sequence_gap", 0) == jumps


def test_an_oversized_payload_is_dropped_unread() -> None:
    with tempfile.TemporaryDirectory() as folder:
        fuzzed, _ = decoder(Path(folder))
        fuzzed.decode("spBv1.0/G/NDATA/n0", b"\x00" * 4097, NOW_MS * 1_000_000)
        assert fuzzed.take_errors()[0] == {"oversized": 1}
