"""The durable spool: recovery after a kill, acknowledgements, caps, damage, replay."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.config.load import parse_config
from agent.runtime import Agent
from agent.store.spool import Spool, decode_frame, frame_parts
from agent.windows.batch import Batcher, TagTable
from protocols._template.driver import TemplateSourceConfig
from simulators.modbus_plc import POINTS, ModbusPLCSimulator
from tests.conftest import read_store, run_agent

S = 1_000_000_000
MS = 1_000_000
T0 = 1_795_000_000 * S


def tags() -> TagTable:
    return TagTable([TemplateSourceConfig(name="dev", tags=[{"name": "a"}, {"name": "b"}])])


def frame(start_ms: int, n: int = 4) -> Frame:
    """n samples of tags a and b alternating, 100 ms apart from ``start_ms``."""
    times = T0 + (start_ms + np.arange(n) * 100) * MS
    return Frame(
        (np.arange(n) % 2).astype(np.int32),
        times.astype(np.int64),
        np.arange(n, dtype=np.float64),
        np.zeros(n, np.uint16),
        int(times[-1]),
    )


def close(spool: Spool, batcher: Batcher, now: int) -> list[str]:
    batches = batcher.close_due(now)
    if batches:
        assert batcher.closed_until is not None
        spool.commit_batches(batches, batcher.closed_until)
    return [b.batch_id for b in batches]


def test_frame_encoding_round_trips_every_column() -> None:
    original = frame(0)
    original.text = np.array([None, "OPEN", None, "SHUT"], dtype=object)
    original.source_time = np.array([1, 0, 3, 4], np.int64)
    back = decode_frame(b"".join(frame_parts(original)))
    for name in ("tag", "time", "value", "quality", "source_time"):
        np.testing.assert_array_equal(getattr(back, name), getattr(original, name))
    assert back.text is not None
    assert back.text.tolist() == [None, "OPEN", None, "SHUT"]
    assert back.server_time is None
    assert back.received == original.received


def test_a_killed_agent_gets_back_exactly_what_no_batch_holds(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, ["u"])
    batcher = Batcher(tags(), S, 0, "gw", "cfg")
    for start in (0, 400, 800, 1200):  # the third frame straddles the 1 s boundary
        f = frame(start)
        spool.append_frame(0, f)
        batcher.add(0, f)
    emitted = close(spool, batcher, T0 + S)
    assert len(emitted) == 1
    spool.append_frame(0, frame(1600))
    # "kill": copy the files as they are, without closing (closing would checkpoint)
    for suffix in ("", "-wal"):
        shutil.copy(f"{path}{suffix}", f"{tmp_path / 'copy.sqlite'}{suffix}")
    shutil.copytree(tmp_path / "spool.frames", tmp_path / "copy.frames")
    recovered = Spool(tmp_path / "copy.sqlite", ["u"]).recover()
    assert recovered.closed_until == T0 + S
    times = np.concatenate([f.time for _, f in recovered.frames])
    expected = T0 + np.array([1000, 1100, 1200, 1300, 1400, 1500, 1600, 1700, 1800, 1900]) * MS
    np.testing.assert_array_equal(np.sort(times), expected)  # nothing before 1 s, all after
    pending = Spool(tmp_path / "copy.sqlite", ["u"]).pending("u")
    assert [p.batch_id for p in pending] == emitted


def test_the_frame_log_keeps_only_segments_a_batch_does_not_hold_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite", ["u"])
    batcher = Batcher(tags(), S, 0, "gw", "cfg")
    for start in range(0, 3000, 400):
        spool.append_frame(0, frame(start))
        batcher.add(0, frame(start))
        close(spool, batcher, T0 + (start + 400) * MS)  # a commit (and new segment) per second
    log_dir = tmp_path / "spool.frames"
    # windows up to 3 s are committed: left is the segment of the frame reaching past 3 s
    assert len(list(log_dir.glob("*.log"))) == spool.frame_log.segment_count == 1
    recovered = Spool(tmp_path / "spool.sqlite", ["u"]).recover()
    times = np.concatenate([f.time for _, f in recovered.frames])
    np.testing.assert_array_equal(times, T0 + np.array([3000, 3100]) * MS)


def test_frame_ids_never_repeat_after_every_segment_was_retired(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, ["u"])
    batcher = Batcher(tags(), S, 0, "gw", "cfg")
    for start in (0, 400):
        spool.append_frame(0, frame(start))
        batcher.add(0, frame(start))
    close(spool, batcher, T0 + 2 * S)
    assert spool.frame_log.segment_count == 0
    spool.close()
    again = Spool(path, ["u"])
    assert again.recover().frames == []
    again.append_frame(0, frame(2000))  # id 3, not 1: ids 1 and 2 are named "emitted"
    recovered = Spool(path, ["u"]).recover()
    assert [len(f) for _, f in recovered.frames] == [4], "the new frame is not taken as sent"


def three_logged_frames(tmp_path: Path) -> tuple[Path, Path]:
    """A spool whose frame log holds frames at 0, 400 and 800 ms: its path and segment."""
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, ["u"])
    for start in (0, 400, 800):
        spool.append_frame(0, frame(start))
    spool.close()
    (segment,) = (tmp_path / "spool.frames").glob("*.log")
    return path, segment


def test_a_torn_frame_record_is_cut_off_and_the_log_runs_on(tmp_path: Path) -> None:
    path, segment = three_logged_frames(tmp_path)
    data = segment.read_bytes()
    segment.write_bytes(data[:-10])  # a kill in the middle of the last write()
    reopened = Spool(path, ["u"])
    assert reopened.frame_log.torn_records == 1
    reopened.append_frame(0, frame(1200))
    starts = [int(f.time[0]) for _, f in Spool(path, ["u"]).recover().frames]
    assert starts == [T0, T0 + 400 * MS, T0 + 1200 * MS], "the torn frame alone is lost"


def test_a_corrupted_frame_record_costs_only_itself(tmp_path: Path) -> None:
    path, segment = three_logged_frames(tmp_path)
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the second record
    segment.write_bytes(bytes(data))
    reopened = Spool(path, ["u"])
    starts = [int(f.time[0]) for _, f in reopened.recover().frames]
    assert starts == [T0, T0 + 800 * MS], "the third record is found again after it"
    assert reopened.recovery_losses["frame_log_corrupt_records"] == 1
    assert reopened.frame_log.torn_records == 0


def test_a_batch_leaves_only_when_every_uplink_has_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite", ["a", "b"])
    batcher = Batcher(tags(), S, 0, "gw", "cfg")
    for start in (0, 1000, 2000):
        batcher.add(0, frame(start))
    close(spool, batcher, T0 + 3 * S)
    first, second, third = spool.pending("a")
    assert not spool.acknowledge("a", first.seq)
    assert [p.seq for p in spool.pending("a")] == [second.seq, third.seq]
    assert [p.seq for p in spool.pending("b")] == [first.seq, second.seq, third.seq]
    assert spool.acknowledge("b", first.seq)
    assert spool.size()[0] == 2
    assert [p.seq for p in spool.pending("b", created_from=first.created_ns + 1)] == []


def test_drop_oldest_counts_exactly_what_it_drops(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite", ["u"])
    batcher = Batcher(tags(), S, 0, "gw", "cfg")
    for start in range(0, 5000, 500):
        batcher.add(0, frame(start, 2))
    close(spool, batcher, T0 + 5 * S)
    count, size, _ = spool.size()
    assert count == 5
    points = [p.points for p in spool.pending("u")]
    dropped, lost = spool.drop_oldest(size * 2 // 5, 10**18, T0)
    assert dropped == 3
    assert lost == sum(points[:3])
    assert spool.losses() == {"overflow": (3, lost)}


def test_a_torn_last_write_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, ["u"])
    batcher = Batcher(tags(), S, 0, "gw", "cfg")
    for start in (0, 1000, 2000):
        batcher.add(0, frame(start))
        close(spool, batcher, T0 + (start + 1000) * MS)
    wal = Path(f"{path}-wal")
    torn = tmp_path / "torn.sqlite"
    shutil.copy(path, torn)
    data = wal.read_bytes()
    Path(f"{torn}-wal").write_bytes(data[: len(data) - 700])  # the last commit, half written
    reopened = Spool(torn, ["u"])
    assert reopened.salvaged is None, "SQLite itself drops a torn WAL tail"
    kept = reopened.pending("u")
    assert 1 <= len(kept) <= 2
    assert [p.batch_id for p in kept] == [p.batch_id for p in spool.pending("u")][: len(kept)]


def test_a_damaged_page_is_detected_and_the_readable_rows_kept(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, ["u"])
    batcher = Batcher(tags(), S, 0, "gw", "cfg")
    for start in range(0, 20_000, 1000):
        batcher.add(0, frame(start, 40))
    close(spool, batcher, T0 + 20 * S)
    before = [p.batch_id for p in spool.pending("u", limit=100)]
    spool.close()
    raw = bytearray(path.read_bytes())
    page = 4096
    assert len(raw) > 6 * page
    raw[4 * page : 5 * page] = b"\xff" * page  # one page of garbage in the middle
    path.write_bytes(bytes(raw))
    damaged = Spool(path, ["u"])
    assert damaged.salvaged is not None, "detected on open"
    assert list(tmp_path.glob("spool.sqlite.damaged-*")), "the damaged file is kept aside"
    kept = [p.batch_id for p in damaged.pending("u", limit=100)]
    assert 0 < len(kept) < len(before) + 1
    assert set(kept) <= set(before)
    damaged.append_frame(0, frame(30_000))  # and it runs on
    assert sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()[0] == "ok"


def agent_text(tmp_path: Path, sources: str, spool: str) -> str:
    return (
        f'[agent]\ngateway_id = "gw"\nmetrics = ""\ndata_dir = "{tmp_path / "state"}"\n'
        '[batch]\nwindow = "500ms"\nlateness = "200ms"\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{tmp_path / "store"}"\n'
        f"[spool]\n{spool}\n{sources}"
    )


@pytest.mark.parametrize("policy", ["drop_oldest", "stop_acquiring"])
async def test_a_full_spool_with_a_dead_uplink_applies_its_policy(
    tmp_path: Path, policy: str
) -> None:
    (tmp_path / "store").write_text("not a folder: the uplink cannot write")
    async with ModbusPLCSimulator(seed=1) as plc:
        sources = plc.agent_config("100ms", points=POINTS[:4])
        spool = f'max_bytes = 2500\noverflow = "{policy}"\ndrain_timeout = "200ms"\n'
        agent = await run_agent(agent_text(tmp_path, sources, spool), 4.0)
    acquired = agent.runners[0].points
    lost = agent.metrics.points_lost.labels("overflow")._value.get()
    left = Spool(tmp_path / "state" / "spool.sqlite", ["parquet"])
    held = sum(p.points for p in left.pending("parquet", limit=1000))
    assert agent.points_written == 0, "the uplink never took anything"
    if policy == "drop_oldest":
        assert lost > 0
        assert left.losses()["overflow"][1] == lost, "the persistent counter agrees"
        assert held + lost == acquired, "every acquired sample is held or counted lost"
    else:
        assert lost == 0
        assert left.losses() == {}
        assert held == acquired, "nothing dropped: acquisition paused instead"
        # paused once the cap was crossed (what was already acquired still gets spooled)
        assert acquired < 4 * 10 * 4 * 0.6, "the sources were held back"


async def test_backlog_after_an_outage_is_replayed_flagged_and_nothing_twice(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    store.write_text("the uplink is down")
    async with ModbusPLCSimulator(seed=2) as plc:
        sources = plc.agent_config("100ms", points=POINTS[:2])
        text = agent_text(tmp_path, sources, 'replay_rate = 4.0\ndrain_timeout = "5s"\n')
        agent = Agent(parse_config(tomllib.loads(text), Path("t.toml")))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(3.0)
        store.unlink()  # the uplink comes back
        await asyncio.sleep(3.0)
        stop.set()
        await task
    table = read_store(store)
    assert table.num_rows == agent.runners[0].points, "every sample exactly once"
    keys = pc.binary_join_element_wise(
        table["tag"].cast(pa.string()), table["time"].cast(pa.string()), "@"
    )
    assert len(pc.unique(keys)) == table.num_rows
    flagged = (table["quality"].to_numpy() & q.Flag.REPLAYED) != 0
    assert flagged.any(), "the outage's batches came back as replayed"
    assert not flagged.all(), "live batches are not"
    replayed_times = table["time"].cast(pa.int64()).to_numpy()[flagged]
    live_times = table["time"].cast(pa.int64()).to_numpy()[~flagged]
    assert np.median(replayed_times) < np.median(live_times)
    assert agent.metrics.replayed.labels("parquet")._value.get() >= 2
