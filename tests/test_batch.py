"""Time-aligned batches: window alignment, lateness, late data, ordering, lineage, ids."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.config.model import SourceConfig
from agent.windows.batch import SCHEMA, Batch, Batcher, TagEntry, TagTable, layout_entries
from protocols._template.driver import TemplateSourceConfig
from protocols.modbus.config import ModbusSourceConfig

MS = 1_000_000
S = 1_000_000_000
T0 = 1_700_000_000 * S  # 2023-11-14T22:13:20Z, a multiple of every window used here
LATE = int(q.Flag.LATE)
BAD_TIMEOUT = q.make(q.BAD, q.Reason.TIMEOUT)


def sources() -> list[SourceConfig]:
    return [
        TemplateSourceConfig(
            name="wave1",
            tags=[
                {"name": "a", "unit": "V", "rate": "100ms"},
                {"name": "b", "rate": "1s", "scale": 2.0, "offset": -1.0},
            ],
        ),
        ModbusSourceConfig(
            name="plc",
            url="modbus+tcp://127.0.0.1",
            tags=[
                {"name": "a", "address": "hr:0", "unit": "rpm"},
                {"name": "label", "address": "hr:1", "type": "string", "length": 8},
                {"name": "c", "address": "hr:9", "unit": "bar", "rate": "250ms"},
            ],
        ),
    ]


def batcher(
    window: int = S, lateness: int = 2 * S, gateway: str = "gw1", config_hash: str = "c0ffee"
) -> Batcher:
    return Batcher(TagTable(sources()), window, lateness, gateway, config_hash)


def frame(
    tags: Sequence[int],
    times: Sequence[int],
    values: Sequence[float] | None = None,
    quality: Sequence[int] | None = None,
    text: Sequence[str | None] | None = None,
) -> Frame:
    n = len(tags)
    return Frame(
        np.asarray(tags, np.int32),
        np.asarray(times, np.int64),
        np.asarray(values if values is not None else np.arange(n), np.float64),
        np.asarray(quality if quality is not None else np.zeros(n), np.uint16),
        max(times) if n else 0,
        None if text is None else np.asarray(text, dtype=object),
    )


def rows(batch: Batch) -> list[tuple[str, str, int, float, int]]:
    table = batch.table
    return list(
        zip(
            table["source"].to_pylist(),
            table["tag"].to_pylist(),
            table["time"].cast(pa.int64()).to_pylist(),
            table["value"].to_pylist(),
            table["quality"].to_pylist(),
            strict=True,
        )
    )


def meta(batch: Batch) -> dict[str, str]:
    raw = batch.table.schema.metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


# --- tag table ----------------------------------------------------------------------------


def test_tag_table_indexes_all_sources() -> None:
    table = TagTable(sources())
    assert len(table) == 5
    assert table.source_names == ["wave1", "plc"]
    assert table.source_offset == [0, 2]
    assert table.tag_names.tolist() == ["a", "b", "a", "label", "c"]
    assert table.tag_source.tolist() == [0, 0, 1, 1, 1]
    assert table.qualified == ["wave1/a", "wave1/b", "plc/a", "plc/label", "plc/c"]
    assert table.lineage[0] == {"rate": "100ms", "unit": "V"}
    assert table.lineage[1] == {"rate": "1s", "scale": 2.0, "offset": -1.0}
    assert table.lineage[4]["rate"] == "250ms"


# --- windows ------------------------------------------------------------------------------


def test_windows_are_aligned_to_the_epoch() -> None:
    b = batcher()
    b.add(0, frame([0, 0, 0, 0], [T0 + 300 * MS, T0 + 700 * MS, T0 + 1200 * MS, T0 + 3 * S - 1]))
    batches = b.close_due(T0 + 3 * S + 2 * S)
    assert [x.window_start_ns for x in batches] == [T0, T0 + S, T0 + 2 * S]
    assert [x.window_end_ns for x in batches] == [T0 + S, T0 + 2 * S, T0 + 3 * S]
    assert [x.points for x in batches] == [2, 1, 1]
    for x in batches:
        times = x.table["time"].cast(pa.int64()).to_pylist()
        assert all(x.window_start_ns <= t < x.window_end_ns for t in times)


@pytest.mark.parametrize("window", [7 * S, 250 * MS, 10 * S, 3 * S + 1])
@pytest.mark.parametrize("first", [T0 + 123_456_789, T0 + 5 * S + 1, T0 - 11 * S + 999])
def test_window_starts_do_not_depend_on_when_samples_arrive(window: int, first: int) -> None:
    b = batcher(window=window, lateness=0)
    times = [first + k * 333 * MS for k in range(60)]
    b.add(1, frame([0] * len(times), times))
    batches = b.flush()
    assert sum(x.points for x in batches) == len(times)
    for x in batches:
        assert x.window_start_ns % window == 0
        assert x.window_end_ns == x.window_start_ns + window
        stamps = x.table["time"].cast(pa.int64()).to_pylist()
        assert all(x.window_start_ns <= t < x.window_end_ns for t in stamps)
    starts = [x.window_start_ns for x in batches]
    assert starts == sorted(set(starts))


def test_two_gateways_starting_at_different_times_cut_the_same_windows() -> None:
    early, late = batcher(window=10 * S, gateway="g1"), batcher(window=10 * S, gateway="g2")
    early.add(0, frame([0] * 50, [T0 + 1 * S + k * S for k in range(50)]))
    late.add(0, frame([0] * 40, [T0 + 11_500 * MS + k * S for k in range(40)]))
    early_windows = {x.window_start_ns for x in early.flush()}
    late_windows = {x.window_start_ns for x in late.flush()}
    assert late_windows <= early_windows
    assert min(late_windows) == T0 + 10 * S


def test_close_due_waits_for_lateness_after_window_end() -> None:
    b = batcher(window=S, lateness=2 * S)
    b.add(0, frame([0, 1], [T0 + 100 * MS, T0 + 900 * MS]))
    b.add(0, frame([0], [T0 + 1_500 * MS]))
    assert b.close_due(T0 + S) == []
    assert b.close_due(T0 + 3 * S - 1) == []  # window [T0, T0+1s) ended 2 s - 1 ns ago
    assert b.pending_points == 3
    (first,) = b.close_due(T0 + 3 * S)
    assert first.window_start_ns == T0
    assert first.points == 2
    assert b.pending_points == 1
    assert b.close_due(T0 + 4 * S - 1) == []
    (second,) = b.close_due(T0 + 4 * S)
    assert second.window_start_ns == T0 + S
    assert b.pending_points == 0
    assert b.late_points == 0


def test_close_due_with_zero_lateness() -> None:
    b = batcher(window=S, lateness=0)
    b.add(0, frame([0], [T0 + S - 1]))
    assert b.close_due(T0 + S - 1) == []
    assert [x.window_start_ns for x in b.close_due(T0 + S)] == [T0]


# --- late data ----------------------------------------------------------------------------


def test_late_sample_goes_into_the_next_batch_flagged_late() -> None:
    b = batcher(window=S, lateness=2 * S)
    b.add(0, frame([0], [T0 + 500 * MS], [1.0]))
    (first,) = b.close_due(T0 + 3 * S)
    assert first.window_start_ns == T0
    # Arrives after its window closed; its original quality must survive the flag.
    b.add(0, frame([1], [T0 + 600 * MS], [2.0], [BAD_TIMEOUT]))
    b.add(1, frame([0], [T0 + 1_400 * MS], [3.0]))
    (second,) = b.close_due(T0 + 4 * S)
    assert second.window_start_ns == T0 + S
    assert rows(second) == [
        ("wave1", "b", T0 + 600 * MS, 2.0, BAD_TIMEOUT | LATE),
        ("plc", "a", T0 + 1_400 * MS, 3.0, 0),
    ]
    assert b.late_points == 1
    assert q.describe(rows(second)[0][4]) == "bad:timeout+late"


def test_late_samples_wait_for_the_next_window_rather_than_reopening_a_closed_one() -> None:
    """As the agent runs it: close_due every 250 ms, samples trickling in, some late."""
    b = batcher(window=S, lateness=2 * S)
    emitted: list[Batch] = []
    now = T0
    for step in range(40):  # 10 s of agent time
        now = T0 + step * 250 * MS
        b.add(0, frame([0], [now - 10 * MS], [float(step)]))  # on time
        if step in (17, 18, 25):  # 4 s behind: its window closed a while ago
            b.add(1, frame([2], [now - 4 * S], [100.0 + step]))
        emitted += b.close_due(now)
    emitted += b.flush()
    starts = [x.window_start_ns for x in emitted]
    assert starts == sorted(set(starts)), "a window was emitted twice"
    assert starts == [T0 + k * S for k in range(-1, 10)]
    assert sum(x.points for x in emitted) == 40 + 3
    assert b.late_points == 3
    late_rows = [(x.window_start_ns, r) for x in emitted for r in rows(x) if r[4] & LATE]
    assert [r[3] for _, r in late_rows] == [117.0, 118.0, 125.0]
    for window_start, r in late_rows:
        assert r[2] < window_start  # carried by a later window's batch
        assert r[:2] == ("plc", "c")


def test_late_only_data_is_emitted_when_the_next_window_closes() -> None:
    b = batcher(window=S, lateness=S)
    b.add(0, frame([0], [T0 + 100 * MS]))
    assert [x.window_start_ns for x in b.close_due(T0 + 2 * S)] == [T0]
    b.add(0, frame([0, 0], [T0 + 200 * MS, T0 + 300 * MS], [7.0, 8.0]))
    assert b.close_due(T0 + 2 * S + 500 * MS) == []  # no window closes: they wait
    assert b.pending_points == 2
    (batch,) = b.close_due(T0 + 3 * S)  # window [T0+1s, T0+2s) closes, empty of its own data
    assert batch.window_start_ns == T0 + S
    assert [r[3] for r in rows(batch)] == [7.0, 8.0]
    assert all(r[4] == LATE for r in rows(batch))
    assert b.late_points == 2
    assert b.pending_points == 0


def test_flush_emits_late_only_data() -> None:
    b = batcher(window=S, lateness=S)
    b.add(0, frame([0], [T0 + 100 * MS]))
    b.close_due(T0 + 2 * S)
    b.add(0, frame([1], [T0 + 200 * MS], [5.0]))
    (batch,) = b.flush()
    assert batch.window_start_ns > T0
    assert rows(batch) == [("wave1", "b", T0 + 200 * MS, 5.0, LATE)]
    assert b.late_points == 1
    assert b.flush() == []


def test_lateness_does_not_depend_on_other_pending_data() -> None:
    """A window that ended lateness ago is closed whether or not anything else was pending."""
    results = []
    for other in (False, True):
        b = batcher(window=S, lateness=S)
        if other:
            b.add(0, frame([1], [T0 + 10 * S]))  # a future sample, not yet due
        assert b.close_due(T0 + 5 * S) == []
        b.add(0, frame([0], [T0 + 2 * S]))  # its window ended 2 s before the close
        closed = b.close_due(T0 + 6 * S)
        results.append([r[4] for x in closed for r in rows(x) if r[1] == "a"])
    assert results == [[LATE], [LATE]]


def test_flush_closes_everything() -> None:
    b = batcher(window=S, lateness=5 * S)
    b.add(0, frame([0, 1, 0], [T0 + 1, T0 + 1_500 * MS, T0 + 2_999 * MS]))
    b.add(1, frame([0], [T0 + 2_100 * MS]))
    assert b.close_due(T0 + 3 * S) == []
    batches = b.flush()
    assert [x.window_start_ns for x in batches] == [T0, T0 + S, T0 + 2 * S]
    assert [x.points for x in batches] == [1, 1, 2]
    assert b.pending_points == 0
    assert b.flush() == []
    assert b.close_due(T0 + 100 * S) == []


def test_empty_frames_are_ignored() -> None:
    b = batcher()
    b.add(0, Frame.empty())
    assert b.pending_points == 0
    assert b.flush() == []


# --- table shape --------------------------------------------------------------------------


def test_rows_sorted_by_tag_then_time_with_dictionary_columns() -> None:
    b = batcher(window=10 * S)
    b.add(1, frame([2, 0, 2, 0], [T0 + 5 * S, T0 + 3 * S, T0 + 1 * S, T0 + 1 * S], [1, 2, 3, 4]))
    b.add(0, frame([1, 0, 1], [T0 + 2 * S, T0 + 9 * S, T0 + 1 * S], [5, 6, 7]))
    b.add(0, frame([0], [T0 + 4 * S], [8]))
    (batch,) = b.flush()
    assert rows(batch) == [
        ("wave1", "a", T0 + 4 * S, 8.0, 0),
        ("wave1", "a", T0 + 9 * S, 6.0, 0),
        ("wave1", "b", T0 + 1 * S, 7.0, 0),
        ("wave1", "b", T0 + 2 * S, 5.0, 0),
        ("plc", "a", T0 + 1 * S, 4.0, 0),
        ("plc", "a", T0 + 3 * S, 2.0, 0),
        ("plc", "c", T0 + 1 * S, 3.0, 0),
        ("plc", "c", T0 + 5 * S, 1.0, 0),
    ]
    schema = batch.table.schema
    assert schema.remove_metadata().equals(SCHEMA)
    assert schema.field("time").type == pa.timestamp("ns", tz="UTC")
    assert pa.types.is_dictionary(schema.field("source").type)
    assert pa.types.is_dictionary(schema.field("tag").type)
    assert schema.field("source").type.value_type == pa.string()
    assert schema.field("tag").type.value_type == pa.string()
    assert batch.table["text"].null_count == batch.points


def test_text_column_carries_strings() -> None:
    b = batcher()
    b.add(1, frame([1, 0], [T0 + 2, T0 + 1], [np.nan, 1.0], text=["MOULD-7", None]))
    b.add(0, frame([0], [T0 + 3]))
    (batch,) = b.flush()
    assert batch.table["tag"].to_pylist() == ["a", "a", "label"]
    assert batch.table["source"].to_pylist() == ["wave1", "plc", "plc"]
    assert batch.table["text"].to_pylist() == [None, None, "MOULD-7"]


def test_device_timestamps_and_receive_time_are_kept_where_a_source_has_them() -> None:
    b = batcher()
    stamped = frame([0, 1], [T0 + 5, T0 + 6])
    stamped.source_time = np.array([T0 + 5, 0], np.int64)  # tag b: no SourceTimestamp
    stamped.server_time = np.array([T0 + 7, T0 + 8], np.int64)
    stamped.received = T0 + 9
    b.add(0, stamped)
    b.add(1, frame([0], [T0 + 4]))  # a Modbus frame: no device timestamps at all
    (batch,) = b.flush()

    def column(name: str) -> list[int | None]:
        return batch.table[name].cast(pa.int64()).to_pylist()

    assert batch.table["tag"].to_pylist() == ["a", "b", "a"]
    assert batch.table["source"].to_pylist() == ["wave1", "wave1", "plc"]
    assert column("source_time") == [T0 + 5, None, None]
    assert column("server_time") == [T0 + 7, T0 + 8, None]
    assert column("received_time") == [T0 + 9, T0 + 9, None]


def test_metadata_lineage() -> None:
    b = batcher(window=10 * S, gateway="press-line-4", config_hash="abcdef0123456789")
    b.add(1, frame([0, 2], [T0 + 1, T0 + 2]))
    b.add(0, frame([0], [T0 + 3]))
    (batch,) = b.flush()
    m = meta(batch)
    assert m["edge_agent.gateway_id"] == "press-line-4"
    assert m["edge_agent.batch_id"] == batch.batch_id
    assert m["edge_agent.window_start"] == "2023-11-14T22:13:20.000000000Z"
    assert m["edge_agent.window_end"] == "2023-11-14T22:13:30.000000000Z"
    assert m["edge_agent.window_start_ns"] == str(T0)
    assert m["edge_agent.window_end_ns"] == str(T0 + 10 * S)
    assert m["edge_agent.config_hash"] == "abcdef0123456789"
    assert m["edge_agent.points"] == "3"
    tags = json.loads(m["edge_agent.tags"])
    assert tags == {  # only the tags present in this batch
        "wave1/a": {"rate": "100ms", "unit": "V"},
        "plc/a": {"rate": "1s", "unit": "rpm"},
        "plc/c": {"rate": "250ms", "unit": "bar"},
    }
    assert batch.gateway_id == "press-line-4"
    assert batch.date == "2023-11-14"
    assert batch.points == 3


def test_batch_id_deterministic_and_content_derived() -> None:
    def make(
        values: Sequence[float] = (1.0, 2.0),
        gateway: str = "gw1",
        config_hash: str = "c0ffee",
        quality: Sequence[int] = (0, 0),
        text: Sequence[str | None] | None = None,
    ) -> str:
        b = batcher(gateway=gateway, config_hash=config_hash)
        b.add(1, frame([1, 1], [T0 + 5, T0 + 6], values, quality, text))
        (batch,) = b.flush()
        return batch.batch_id

    base = make()
    assert base == make()
    assert base.startswith("20231114T221320.000Z-")
    assert len(base.split("-", 1)[1]) == 12
    different = [
        make(values=(1.0, 2.5)),
        make(gateway="gw2"),
        make(config_hash="c0ffef"),
        make(quality=(0, BAD_TIMEOUT)),
        make(text=["A", "B"]),
    ]
    assert base not in different
    assert len(set(different)) == len(different)
    assert make(text=["A", "B"]) == make(text=["A", "B"])
    assert make(text=["A", "B"]) != make(text=["A", "C"])


# --- conservation -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    window=st.sampled_from([100 * MS, S, 3 * S + 7]),
    lateness=st.sampled_from([0, 500 * MS, 2 * S]),
)
def test_points_conserved_across_random_frames(seed: int, window: int, lateness: int) -> None:
    rng = np.random.default_rng(seed)
    b = batcher(window=window, lateness=lateness)
    sizes = [2, 3]
    now = T0 + int(rng.integers(0, 10 * S))
    added: Counter[tuple[int, int, float, int]] = Counter()
    emitted: list[Batch] = []
    for _ in range(int(rng.integers(1, 40))):
        now += int(rng.integers(0, 700 * MS))
        source = int(rng.integers(0, 2))
        n = int(rng.integers(0, 30))
        tags = rng.integers(0, sizes[source], n)
        # Mostly recent samples, some seconds behind (late once their window has closed).
        times = (
            now - rng.integers(0, 300 * MS, n) - rng.integers(0, 2, n) * rng.integers(0, 6 * S, n)
        )
        values = rng.normal(size=n).round(3)
        quality = rng.choice([q.GOOD, BAD_TIMEOUT, q.UNCERTAIN], n)
        b.add(source, frame(tags.tolist(), times.tolist(), values.tolist(), quality.tolist()))
        offset = [0, 2][source]
        added.update(
            zip(
                (tags + offset).tolist(),
                times.tolist(),
                values.tolist(),
                quality.tolist(),
                strict=True,
            )
        )
        if rng.random() < 0.5:
            emitted += b.close_due(now)
    emitted += b.flush()

    table = TagTable(sources())
    index = {name: i for i, name in enumerate(table.qualified)}
    got: Counter[tuple[int, int, float, int]] = Counter()
    late = 0
    starts = []
    for batch in emitted:
        starts.append(batch.window_start_ns)
        assert batch.window_start_ns % window == 0
        keys = []
        for source, tag, time, value, quality in rows(batch):
            gtag = index[f"{source}/{tag}"]
            keys.append((gtag, time))
            if quality & LATE:
                late += 1
                assert time < batch.window_start_ns
            else:
                assert batch.window_start_ns <= time < batch.window_end_ns
            got[(gtag, time, value, quality & ~LATE)] += 1
        assert keys == sorted(keys)
        assert int(meta(batch)["edge_agent.points"]) == batch.points
    assert got == added
    assert late == b.late_points
    assert b.pending_points == 0
    assert starts == sorted(set(starts))


def test_a_new_table_finds_each_tag_by_its_config_name_and_keeps_what_drivers_said() -> None:
    """What a reload relies on: tags moved across by the names the config gives them, a
    tag a driver renamed (a Sparkplug placeholder) found by its config name all the same,
    what drivers described carried over, and the frame log's numbering stored and read."""
    before = TemplateSourceConfig.model_validate(
        {"name": "dev", "tags": [{"name": "x"}, {"name": "y"}]}
    )
    old = TagTable([before])
    old.describe(0, "Motor/Speed", {"unit": "rpm"})
    assert old.qualified[0] == "dev/Motor/Speed"
    after = TemplateSourceConfig.model_validate(
        {"name": "dev", "tags": [{"name": "z"}, {"name": "y"}, {"name": "x"}]}
    )
    gone = TagEntry("old", "w", {"rate": "1s"})
    new = TagTable([after], retired=[gone])
    assert new.moved_from(old).tolist() == [2, 1]
    new.inherit(old)
    assert new.qualified == ["dev/z", "dev/y", "dev/Motor/Speed", "old/w"]
    assert new.lineage[2]["unit"] == "rpm"
    assert new.version > old.version, "whoever announced the old tags does again"
    assert new.live_tags == 3
    assert new.source_names == ["dev", "old"]
    slots = layout_entries(new.layout())
    assert [[entry.qualified for entry in slot] for slot in slots] == [["dev/z", "dev/y", "dev/x"]]
    assert new.index_of(["dev/x", "old/w", "dev/q"]).tolist() == [2, 3, -1]
