"""Poison batches, kept on disk with the reason why: never sent again, never deleted.

A batch that does not decode (a CRC mismatch, broken Parquet) or that an uplink rejects
for good would block its uplink if retried forever; deleting it would lose samples
without a trace. It is put here instead, in ``<data_dir>/quarantine/``: the bytes as
``<batch_id>.parquet`` (``.bin`` when they are not a Parquet file) and a JSON sidecar
``<batch_id>.json`` with the reason, the uplink (null: every uplink), the points, the time
and the bytes' CRC-32, so that plant IT can inspect it, send it by hand or delete it.
The agent itself never deletes anything here.

Each file is written under a temporary name, fsynced, then renamed, the sidecar last, so a
sidecar always stands for complete bytes and a crash leaves at most a stray ``.tmp``
file (ignored). Nothing is overwritten: the same batch put again (another uplink
rejecting it too) gets a name of its own, ``<batch_id>-2``... The counts come from the
sidecars, read once on start, so they survive restarts.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from pathlib import Path
from typing import Any

import structlog

from agent.store.durable import replace_durably

log = structlog.get_logger()

_PARQUET_MAGIC = b"PAR1"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class Quarantine:
    """The quarantine directory of one agent."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._entries = [_read_sidecar(path) for path in directory.glob("*.json")]
        self._entries.sort(key=lambda entry: int(entry.get("time_ns", 0)))

    def put(self, batch_id: str, data: bytes, reason: str, uplink: str | None, points: int) -> Path:
        """Keep a poison batch's bytes and why; returns the path of the bytes. Raises
        OSError when they cannot be written (a full disk): the caller decides."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = self._free_stem(_UNSAFE.sub("_", batch_id) or "batch")
        target = self.directory / (stem + (".parquet" if _is_parquet(data) else ".bin"))
        entry = {
            "batch_id": batch_id,
            "file": target.name,
            "reason": reason,
            "uplink": uplink,
            "points": points,
            "bytes": len(data),
            "crc": zlib.crc32(data),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "time_ns": time.time_ns(),
        }
        replace_durably(target, [data], sync_directory=False)
        try:
            sidecar = json.dumps(entry, indent=1).encode()
            replace_durably(self.directory / f"{stem}.json", [sidecar])
        except OSError:
            target.unlink()  # bytes without a sidecar are a put that did not happen
            raise
        self._entries.append(entry)
        return target

    def count(self) -> tuple[int, int]:
        """(batches, points) in quarantine, including those of earlier runs."""
        return len(self._entries), sum(int(entry.get("points", 0)) for entry in self._entries)

    def entries(self, newest: int = 5) -> list[dict[str, Any]]:
        """The newest sidecars, newest first (for /healthz)."""
        return [dict(entry) for entry in reversed(self._entries[-newest:])]

    def _free_stem(self, stem: str) -> str:
        taken = {path.stem for path in self.directory.iterdir()}
        candidate, n = stem, 1
        while candidate in taken:
            n += 1
            candidate = f"{stem}-{n}"
        return candidate


def _is_parquet(data: bytes) -> bool:
    """Whether the bytes are framed as a Parquet file (its magic at both ends); whether
    they decode is another matter, and why they are here."""
    return len(data) >= 8 and data[:4] == _PARQUET_MAGIC and data[-4:] == _PARQUET_MAGIC


def _read_sidecar(path: Path) -> dict[str, Any]:
    """A sidecar's content; an unreadable one still counts as a batch (of unknown size)."""
    try:
        entry = json.loads(path.read_bytes())
        if isinstance(entry, dict):
            return entry
    except (OSError, ValueError):
        pass
    log.warning("quarantine: a sidecar cannot be read, counted as 0 points", path=str(path))
    return {"file": path.name, "reason": "sidecar unreadable", "points": 0}
