"""A private mosquitto broker on a free loopback port, for tests, benchmarks and demos.

Each instance writes its own config into its own directory (listener on 127.0.0.1 only,
anonymous access unless ``users`` are given, persistence so sessions survive
``restart()``), so tests never touch a
system broker on 1883 and never see each other's messages. TLS listeners take the CA,
server certificate and key files and can require client certificates; a broker with TLS
listens on both ports, plain ``url`` (for test publishers) and ``tls_url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

_START_TIMEOUT_S = 10.0


def mosquitto_binary() -> str | None:
    """The mosquitto executable, or None when it is not installed."""
    return shutil.which("mosquitto") or next(
        (
            path
            for path in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
            if os.access(path, os.X_OK)
        ),
        None,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class BrokerTls:
    """PEM files of a TLS listener."""

    ca_file: Path
    certificate: Path
    private_key: Path
    require_certificate: bool = True


class MosquittoBroker:
    """``async with MosquittoBroker(tmp_dir) as broker: broker.url`` -- see module doc."""

    def __init__(
        self,
        directory: Path,
        tls: BrokerTls | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed")
        self.binary = binary
        self.directory = directory
        self.tls = tls
        self.users = dict(users) if users is not None else None
        self.port = 0
        self.tls_port = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def tls_url(self, host: str = "127.0.0.1") -> str:
        return f"mqtts://{host}:{self.tls_port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    def _config(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.users is not None else 'true'}",
            "persistence true",
            f"persistence_location {self.directory}/",
            f"log_dest file {self.log_file}",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
        ]
        if self.users is not None:
            lines.append(f"password_file {self.directory / 'passwords'}")
        if os.geteuid() == 0:  # mosquitto would switch to its own user and lose our files
            lines.append("user root")
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.certificate}",
                f"keyfile {self.tls.private_key}",
                f"require_certificate {str(self.tls.require_certificate).lower()}",
            ]
        return "\n".join(lines) + "\n"

    async def start(self) -> int:
        """Start (on the same port again after a stop); returns the port once it accepts."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
            self.tls_port = free_port() if self.tls is not None else 0
        config = self.directory / "mosquitto.conf"
        config.write_text(self._config())
        if self.users is not None:
            await self._write_passwords()
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            "-c",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_S
        while True:
            if self._process.returncode is not None:
                log = self.log_file.read_text() if self.log_file.exists() else ""
                raise RuntimeError(f"mosquitto exited at start: {log[-2000:]}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return self.port
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise RuntimeError(f"mosquitto did not listen on port {self.port}")
            await asyncio.sleep(0.02)

    async def _write_passwords(self) -> None:
        """The password file, hashed by mosquitto_passwd (mosquitto reads no plain text)."""
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        path = self.directory / "passwords"
        path.write_text("")
        for user, password in (self.users or {}).items():
            process = await asyncio.create_subprocess_exec(
                tool, "-b", str(path), user, password, stdout=asyncio.subprocess.DEVNULL
            )
            if await process.wait() != 0:
                raise RuntimeError(f"mosquitto_passwd failed for user {user!r}")
        path.chmod(0o600)

    async def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file) and wait for the exit."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
