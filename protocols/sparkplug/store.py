"""What a Sparkplug source must remember across restarts: births and automatic tags.

**Births.** Data messages name metrics by the aliases their edge node's last birth
certificate declared. A gateway restarted on a persistent session gets the data published
while it was away, without the births before it: so each NBIRTH and DBIRTH is kept, as
received, in ``<data_dir>/sparkplug/<source>/`` (one file per node or device, written to a
temporary name and renamed, so a kill leaves the old or the new one), and replayed into the
alias tables at start. A death deletes its files: data after it needs a new birth.

**Automatic tags.** An automatic tag's place in the source's tag table (its slot) must mean
the same metric after a restart: the frame log holds samples by slot number. Assignments
are appended to ``<data_dir>/sparkplug/<source>.tags`` (JSON lines ``{"slot", "path",
"name"}``), flushed and fsynced before the first sample of the slot is handed on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class BirthStore:
    """The last birth of every node and device, one file each: ``<node>-N.birth`` and
    ``<node>-D-<device>.birth`` (hex digests of the ids), holding the topic, a newline and
    the payload bytes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _node_prefix(self, group: str, node: str) -> str:
        return _digest(f"{group}/{node}")

    def save(self, group: str, node: str, device: str | None, topic: str, payload: bytes) -> None:
        """Keep a birth (raises OSError); an NBIRTH forgets the node's devices' births."""
        self.directory.mkdir(parents=True, exist_ok=True)
        prefix = self._node_prefix(group, node)
        if device is None:
            self.forget(group, node)
            name = f"{prefix}-N.birth"
        else:
            name = f"{prefix}-D-{_digest(device)}.birth"
        temporary = self.directory / (name + ".new")
        temporary.write_bytes(topic.encode() + b"\n" + payload)
        temporary.replace(self.directory / name)

    def forget(self, group: str, node: str, device: str | None = None) -> None:
        """Delete a node's births (with its devices'), or one device's."""
        if not self.directory.exists():
            return
        prefix = self._node_prefix(group, node)
        pattern = f"{prefix}-*.birth" if device is None else f"{prefix}-D-{_digest(device)}.birth"
        for path in self.directory.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def load(self) -> list[tuple[str, bytes]]:
        """(topic, payload) of every kept birth, node births first."""
        if not self.directory.exists():
            return []
        births = []
        for path in sorted(self.directory.glob("*.birth"), key=lambda p: "-D-" in p.name):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            topic, _, payload = data.partition(b"\n")
            with contextlib.suppress(UnicodeDecodeError):
                births.append((topic.decode(), payload))
        return births


class TagCatalogue:
    """Metric path -> (slot, tag name) of a source's automatic tags, append-only on disk."""

    def __init__(self, path: Path, slots: int) -> None:
        self.path = path
        self.slots = slots
        self.by_path: dict[str, tuple[int, str]] = {}
        self.names: set[str] = set()
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    slot, metric, name = int(entry["slot"]), str(entry["path"]), str(entry["name"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a kill mid-append
                if 0 <= slot < slots and metric not in self.by_path:
                    self.by_path[metric] = (slot, name)
                    self.names.add(name)
        self._used = {slot for slot, _ in self.by_path.values()}

    @property
    def full(self) -> bool:
        return len(self._used) >= self.slots

    def assign(self, path: str, name: str) -> int | None:
        """The slot of a new automatic tag, durable on return; None when all are taken.
        Raises OSError when the catalogue cannot be written (then nothing is assigned)."""
        slot = next((s for s in range(len(self._used), self.slots) if s not in self._used), None)
        if slot is None:
            slot = next((s for s in range(self.slots) if s not in self._used), None)
        if slot is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"slot": slot, "path": path, "name": name}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.by_path[path] = (slot, name)
        self.names.add(name)
        self._used.add(slot)
        return slot
