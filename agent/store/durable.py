"""Writing a file so that a crash leaves either the old content or the new, whole.

Shared by the frame log's open-time repair and the quarantine: a temporary file beside
the target, fsynced, renamed over it, and the directory fsynced so that the rename
itself survives a power cut. A failed write removes the temporary file and raises.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def replace_durably(path: Path, parts: Iterable[bytes], sync_directory: bool = True) -> None:
    """Make ``path`` hold ``parts``, one after the other (see the module docstring)."""
    temporary = path.with_name(f"{path.name}.tmp")
    try:
        with temporary.open("wb") as file:
            file.writelines(parts)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    if sync_directory:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
