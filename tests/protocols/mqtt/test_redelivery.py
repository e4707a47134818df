"""The table of stored QoS 1/2 messages (``protocols.mqtt.redelivery``), on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protocols.mqtt import redelivery
from protocols.mqtt.redelivery import RECORD, DeliveredLog, message_digest


def test_a_redelivery_is_known_only_with_its_packet_id_and_content(tmp_path: Path) -> None:
    log = DeliveredLog(tmp_path / "s.delivered")
    same = message_digest("plant/t", b"21.5")
    log.record(DeliveredLog.records([7, 8], [same, message_digest("plant/t", b"21.6")]))
    assert log.is_stored(7, same)
    assert not log.is_stored(9, same), "another packet id: another message"
    assert not log.is_stored(8, same), "the id reused for other content"
    assert not log.is_stored(7, message_digest("plant/u", b"21.5")), "another topic"
    assert log.take_duplicates() == 1
    assert log.take_duplicates() == 0


def test_the_table_survives_a_restart_and_the_last_message_of_an_id_counts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mqtt" / "s.delivered"
    first = DeliveredLog(path)
    old, new = message_digest("t", b"1"), message_digest("t", b"2")
    first.record(DeliveredLog.records([5], [old]))
    first.record(DeliveredLog.records([5, 6], [new, old]))
    first.close()
    again = DeliveredLog(path)
    assert again.is_stored(5, new)
    assert not again.is_stored(5, old)
    assert again.is_stored(6, old)


def test_a_torn_last_record_is_cut_off_and_appends_stay_aligned(tmp_path: Path) -> None:
    path = tmp_path / "s.delivered"
    log = DeliveredLog(path)
    digest = message_digest("t", b"1")
    log.record(DeliveredLog.records([1], [digest]))
    log.close()
    with path.open("ab") as file:
        file.write(b"\x02\x00\x99")  # a kill in the middle of a write
    again = DeliveredLog(path)
    assert path.stat().st_size == RECORD.itemsize
    again.record(DeliveredLog.records([3], [digest]))
    again.close()
    last = DeliveredLog(path)
    assert last.is_stored(1, digest)
    assert last.is_stored(3, digest)


def test_a_session_the_broker_did_not_keep_forgets_everything(tmp_path: Path) -> None:
    path = tmp_path / "s.delivered"
    log = DeliveredLog(path)
    digest = message_digest("t", b"1")
    log.record(DeliveredLog.records([1, 2], [digest, digest]))
    log.reset()
    assert not log.is_stored(1, digest)
    assert path.stat().st_size == 0
    log.close()
    assert not DeliveredLog(path).is_stored(2, digest)


def test_the_file_is_rewritten_from_the_table_at_its_cap(tmp_path: Path) -> None:
    path = tmp_path / "s.delivered"
    log = DeliveredLog(path)
    cap = redelivery._MAX_RECORDS
    digests = [message_digest("t", str(n).encode()) for n in range(cap + 10)]
    ids = [1 + n % 1000 for n in range(cap + 10)]  # 1,000 packet ids, reused
    for start in range(0, len(ids), 500):
        log.record(DeliveredLog.records(ids[start : start + 500], digests[start : start + 500]))
    assert path.stat().st_size < 2 * 1000 * RECORD.itemsize + 500 * RECORD.itemsize
    log.close()
    again = DeliveredLog(path)
    assert all(again.is_stored(mid, d) for mid, d in zip(ids[-1000:], digests[-1000:], strict=True))
    assert not again.is_stored(ids[0], digests[0])


def test_a_failed_write_raises_keeps_the_table_and_leaves_no_torn_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.delivered"
    log = DeliveredLog(path)
    digest = message_digest("t", b"1")
    log.record(DeliveredLog.records([1], [digest]))
    log.close()
    log._fd = os.open(path, os.O_RDONLY)  # a write that fails, as on a read-only remount
    with pytest.raises(OSError, match="Bad file descriptor"):
        log.record(DeliveredLog.records([2], [digest]))
    assert log.is_stored(2, digest), "the process still knows"
    log.close()
    log.record(DeliveredLog.records([3], [digest]))
    log.close()
    again = DeliveredLog(path)
    assert path.stat().st_size == 2 * RECORD.itemsize
    assert again.is_stored(1, digest)
    assert again.is_stored(3, digest)
