"""A private MQTT broker on a free loopback port, for tests, benchmarks and demos.

``private_broker(directory)`` starts mosquitto when its binary is installed, otherwise
amqtt, the pip-installed broker of the ``test`` extra, so the MQTT tests also run on a
fresh machine. ``EDGE_AGENT_MQTT_BROKER=amqtt`` (or ``=mosquitto``) forces one, so the
fallback can be tested where mosquitto is installed.

Either broker runs as its own process, with its own config in its own directory
(listener on 127.0.0.1 only, anonymous access unless ``users`` are given), so tests never
touch a system broker on 1883 and never see each other's messages, and ``restart()``
stops and starts it on the same port. TLS listeners take the CA, server certificate and
key files and can require client certificates; a broker with TLS listens on both ports,
plain ``url`` (for test publishers) and ``tls_url``. The brokers differ in what they can
do (``features``): amqtt speaks MQTT 3.1.1 only, forgets its sessions on restart and has
no shared subscriptions, so a test that needs one of those skips on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib.util
import json
import os
import shutil
import socket
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

BROKER_ENV = "EDGE_AGENT_MQTT_BROKER"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


class Feature(enum.Enum):
    """What a test may need from its broker; the value is the reason text of a skip."""

    MQTT5 = "MQTT 5"
    PERSISTENT_SESSIONS = "sessions that survive a broker restart"
    SHARED_SUBSCRIPTIONS = "shared subscriptions ($share/<group>/...)"
    QUEUED_QOS0 = "QoS 0 messages queued for an absent persistent subscriber"


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


class PrivateBroker(ABC):
    """``async with private_broker(tmp_dir) as broker: broker.url`` -- see module doc.

    The process handling (ports, start, wait for the listener, stop) is shared; a
    subclass writes its config and names its command line.
    """

    name: ClassVar[str]
    features: ClassVar[frozenset[Feature]]

    def __init__(
        self,
        directory: Path,
        tls: BrokerTls | None = None,
        users: dict[str, str] | None = None,
        queue_qos0: bool = False,
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.users = dict(users) if users is not None else None
        # keep QoS 0 messages for an absent persistent subscriber too (Sparkplug data is
        # QoS 0); mosquitto only
        self.queue_qos0 = queue_qos0
        self.port = 0
        self.tls_port = 0
        self._process: asyncio.subprocess.Process | None = None

    @classmethod
    @abstractmethod
    def available(cls) -> bool:
        """Whether this broker is installed on the machine."""

    @abstractmethod
    async def _command(self) -> list[str]:
        """Write the config into ``directory`` for the current ports; the command line."""

    @classmethod
    def mqtt_version(cls) -> str:
        """The newest MQTT version it speaks, spelled as a source's ``mqtt_version``."""
        return "5" if Feature.MQTT5 in cls.features else "3.1.1"

    @classmethod
    def lacks(cls, *needed: Feature) -> str | None:
        """Why a test needing ``needed`` cannot run on this broker, or None if it can."""
        missing = [feature.value for feature in needed if feature not in cls.features]
        return f"the {cls.name} broker lacks {', '.join(missing)}" if missing else None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def tls_url(self, host: str = "127.0.0.1") -> str:
        return f"mqtts://{host}:{self.tls_port}"

    @property
    def log_file(self) -> Path:
        return self.directory / f"{self.name}.log"

    async def start(self) -> int:
        """Start (on the same port again after a stop); returns the port once it accepts."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
            self.tls_port = free_port() if self.tls is not None else 0
        command = await self._command()
        with self.log_file.open("ab") as log:  # the child keeps its own descriptor
            self._process = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.DEVNULL, stderr=log
            )
        await self._wait_until_listening(self._process)
        return self.port

    async def _wait_until_listening(self, process: asyncio.subprocess.Process) -> None:
        """Poll the port: a broker accepts there only once it is configured and ready."""
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_S
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"{self.name} exited at start: {self._log_tail()}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise RuntimeError(f"{self.name} did not listen on port {self.port}")
            await asyncio.sleep(0.02)

    def _log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""

    async def stop(self) -> None:
        """SIGTERM (the broker saves what it persists) and wait for the exit."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), _STOP_TIMEOUT_S)
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


class MosquittoBroker(PrivateBroker):
    """mosquitto, with persistence so sessions survive ``restart()``."""

    name = "mosquitto"
    features = frozenset(Feature)

    @classmethod
    def available(cls) -> bool:
        return mosquitto_binary() is not None

    async def _command(self) -> list[str]:
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed")
        config = self.directory / "mosquitto.conf"
        config.write_text(self._config())
        if self.users is not None:
            await self._write_passwords()
        return [binary, "-c", str(config)]

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
        if self.queue_qos0:
            lines.append("queue_qos0_messages true")
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


class AmqttBroker(PrivateBroker):
    """amqtt (pure Python, from the ``test`` extra), run by ``simulators.amqtt_runner``.

    It speaks MQTT 3.1.1 only, keeps sessions in memory (a restart forgets them) and has
    no shared subscriptions; logins, TLS and client certificates work as with mosquitto.
    """

    name = "amqtt"
    features: ClassVar[frozenset[Feature]] = frozenset()

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("amqtt") is not None

    async def _command(self) -> list[str]:
        config = self.directory / "amqtt.json"
        config.write_text(json.dumps(self._config(), indent=2))
        return [sys.executable, "-m", "simulators.amqtt_runner", str(config)]

    def _config(self) -> dict[str, Any]:
        """The runner's config: amqtt's broker config plus what amqtt cannot say itself."""
        listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}}
        if self.tls is not None:
            listeners["tls"] = {
                "type": "tcp",
                "bind": f"127.0.0.1:{self.tls_port}",
                "ssl": True,
                "cafile": str(self.tls.ca_file),
                "certfile": str(self.tls.certificate),
                "keyfile": str(self.tls.private_key),
            }
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                "allow_anonymous": self.users is None
            }
        }
        if self.users is not None:
            plugins["amqtt.plugins.authentication.FileAuthPlugin"] = {
                "password_file": str(self._write_passwords())
            }
        return {
            "broker": {"listeners": listeners, "plugins": plugins},
            "require_certificate": self.tls is not None and self.tls.require_certificate,
        }

    def _write_passwords(self) -> Path:
        """``user:argon2-hash`` lines, the format amqtt's file auth plugin reads."""
        from argon2 import PasswordHasher  # a dependency of amqtt's password hashing

        hasher = PasswordHasher()
        path = self.directory / "passwords"
        path.write_text("".join(f"{u}:{hasher.hash(p)}\n" for u, p in (self.users or {}).items()))
        path.chmod(0o600)
        return path


BROKERS: dict[str, type[PrivateBroker]] = {"mosquitto": MosquittoBroker, "amqtt": AmqttBroker}


def broker_class() -> type[PrivateBroker] | None:
    """The broker ``private_broker`` starts: forced by ``EDGE_AGENT_MQTT_BROKER``, else
    mosquitto if installed, else amqtt if installed, else None."""
    forced = os.environ.get(BROKER_ENV, "")
    if not forced:
        return next((cls for cls in BROKERS.values() if cls.available()), None)
    if forced not in BROKERS:
        raise ValueError(f"{BROKER_ENV}={forced!r}: expected one of {sorted(BROKERS)}")
    cls = BROKERS[forced]
    if not cls.available():
        raise FileNotFoundError(f"{BROKER_ENV}={forced} but {forced} is not installed")
    return cls


def private_broker(
    directory: Path,
    tls: BrokerTls | None = None,
    users: dict[str, str] | None = None,
    queue_qos0: bool = False,
) -> PrivateBroker:
    """A private broker, not started yet: use it as an async context manager."""
    cls = broker_class()
    if cls is None:
        raise FileNotFoundError(
            "no MQTT broker: install mosquitto, or amqtt (pip install edge-agent[test])"
        )
    return cls(directory, tls, users, queue_qos0)
