"""The independent Sparkplug B implementation the tests run against: Eclipse Tahu's
JavaScript clients (npm ``sparkplug-client``, ``sparkplug-payload`` and ``mqtt``, pinned in
``tests/sparkplug/peer/package-lock.json``), driven as node processes.

``peer_modules()`` installs them once with ``npm ci`` into a cache folder named after the
lock file's digest (``$EDGE_AGENT_NPM_CACHE``, default ``~/.cache/edge-agent``); without
node or npm, or when the registry cannot be reached, the tests skip naming why, and
``EDGE_AGENT_FAIL_ON_SKIP=1`` (CI) turns that skip into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

PEER = Path(__file__).parent / "peer"
_NPM_TIMEOUT_S = 300


def peer_modules() -> Path:
    """The node_modules folder holding the pinned Tahu clients (installed on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Tahu Sparkplug peer (apt install nodejs npm)")
    lock = (PEER / "package-lock.json").read_bytes()
    cache = Path(os.environ.get("EDGE_AGENT_NPM_CACHE", Path.home() / ".cache" / "edge-agent"))
    folder = cache / f"sparkplug-peer-{hashlib.sha256(lock).hexdigest()[:12]}"
    modules = folder / "node_modules"
    if (folder / ".installed").exists():
        return modules
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(PEER / name, folder / name)
    try:
        subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=_NPM_TIMEOUT_S,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"npm ci of the Tahu peer failed: {output.decode(errors='replace')[-300:]}")
    (folder / ".installed").touch()
    return modules


class NodeProcess:
    """A peer script: JSON commands in, JSON lines out (kept in ``lines``)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))
                self._changed.set()

    async def wait_for(self, predicate: Any, seconds: float = 10.0) -> dict[str, Any]:
        """The first line ``predicate`` accepts; fails the test after ``seconds``."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            for line in self.lines:
                if predicate(line):
                    return line
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self.process.returncode is not None:
                pytest.fail(f"peer did not say it within {seconds} s; said {self.lines[-5:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def command(self, **command: Any) -> None:
        """Send one command and wait until the peer has carried it out."""
        assert self.process.stdin is not None
        done = sum(1 for line in self.lines if "done" in line)
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        if command.get("cmd") not in ("kill", "offline", "online", "rebirth"):
            await self.wait_for(lambda line: line.get("done") == done + 1)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def node_script(modules: Path, script: str, *args: str) -> AsyncIterator[NodeProcess]:
    process = await asyncio.create_subprocess_exec(
        "node",
        str(PEER / script),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    peer = NodeProcess(process)
    try:
        yield peer
    finally:
        await peer.stop()
