"""Whether the folders the agent writes can be created and written, checked before it starts.

A ``data_dir`` under a read-only mount, owned by another user or below a regular file is a
mistake in the installation, not a passing fault: found at start it is one config-error
line and exit status 2 (which the systemd unit does not restart), where the agent itself
would die later with a traceback and be restarted forever.

The probe creates the missing folders (``mkdir -p``, as the agent will) and creates, lists
and deletes an empty file in each, as the user the command runs as. It writes no data: a
full disk (``ENOSPC``, ``EDQUOT``) is a fault the running agent rides out and recovers
from, so it is not a reason to refuse to start. ``check`` removes the folders it made, so
validating a config leaves no trace on the machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agent.config.load import ConfigError
from agent.config.model import AgentConfig, CollectConfig, ParquetUplinkConfig

_FULL = {errno.ENOSPC, errno.EDQUOT}


def local_dir(location: str) -> Path | None:
    """The folder a parquet ``path`` names on this machine, None for remote storage.

    Resolved as the parquet uplink resolves it: ``~`` expanded, relative to the working
    directory, ``file://`` URIs taken as local."""
    if "://" not in location:
        return Path(location).expanduser().resolve()
    parts = urlsplit(location)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def _parquet_dir(store: object) -> Path | None:
    return local_dir(store.path) if isinstance(store, ParquetUplinkConfig) else None


def agent_dirs(config: AgentConfig) -> list[tuple[str, Path]]:
    """(key path, folder) of everything ``run`` writes locally: the spool's data_dir, local
    parquet uplinks and the resampled output."""
    dirs = [("agent.data_dir", config.agent.data_dir.absolute())]
    for index, uplink in enumerate(config.uplinks):
        if (directory := _parquet_dir(uplink)) is not None:
            dirs.append((f"uplinks[{index}].path", directory))
    if config.resample is not None and (wide := local_dir(config.resample.path)) is not None:
        dirs.append(("resample.path", wide))
    return dirs


def collect_dirs(config: CollectConfig) -> list[tuple[str, Path]]:
    """(key path, folder) of a collector's local parquet store, if it has one."""
    directory = _parquet_dir(config.store)
    return [] if directory is None else [("store.path", directory)]


def write_problem(directory: Path, *, keep: bool = True) -> str | None:
    """Why files cannot be kept in ``directory`` ("cannot create /x: Permission denied"),
    or None when they can. With ``keep=False`` the folders it had to create are removed."""
    created = _missing(directory)
    try:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return _reason("cannot create", directory, exc)
        try:
            fd, name = tempfile.mkstemp(prefix=".edge-agent-check-", dir=directory)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            return _reason("cannot write", directory, exc)
        try:
            os.listdir(directory)  # the spool finds its segments by listing the folder
        except OSError as exc:
            return _reason("cannot read", directory, exc)
        return None
    finally:
        if not keep:
            for path in created:  # deepest first; a folder someone filled meanwhile stays
                with contextlib.suppress(OSError):
                    path.rmdir()


def require_writable(file: str | Path, dirs: Iterable[tuple[str, Path]], *, keep: bool) -> None:
    """Raise ConfigError with one line per folder that cannot be written, each naming its
    key (``agent.toml: agent.data_dir: cannot write /var/lib/x: Permission denied``)."""
    problems = [
        (key, problem)
        for key, directory in dirs
        if (problem := write_problem(directory, keep=keep)) is not None
    ]
    if problems:
        raise ConfigError(str(file), problems)


def _missing(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, deepest first. One that only
    looks missing because an ancestor cannot be searched cannot be removed either, so
    ``keep=False`` never removes a folder that was there before."""
    missing: list[Path] = []
    path = directory
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _reason(verb: str, directory: Path, exc: OSError) -> str | None:
    if exc.errno in _FULL:
        return None
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _not_a_directory(directory)
        if blocker is not None:
            return f"{verb} {directory}: {blocker} is not a directory"
    return f"{verb} {directory}: {exc.strerror or exc}"


def _not_a_directory(directory: Path) -> Path | None:
    """The nearest of ``directory`` and its ancestors that exists but is not a folder."""
    for path in (directory, *directory.parents):
        if os.path.lexists(path):
            return None if os.path.isdir(path) else path
    return None
