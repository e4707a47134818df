"""The agent's local endpoint: ``/metrics`` (Prometheus), ``/healthz``, ``/status`` and
``POST /reload``.

A few lines on asyncio streams rather than a web framework: four small endpoints do not
earn a dependency, and this keeps the endpoint in the agent's own event loop. A reload
only re-reads the file the agent was started with, but it restarts sources: it is taken
from loopback clients only, even where the endpoint listens wider for a Prometheus
server elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent.ops.reload import ReloadResult

# how each reload outcome answers: the reload command maps these to its exit status
RELOAD_STATUS = {"applied": 200, "unchanged": 200, "invalid": 422, "refused": 409}
_REASONS = {200: "OK", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}


class StatusServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], dict[str, Any]],
        status: Callable[[], dict[str, Any]] | None = None,
        reload: Callable[[], Awaitable[ReloadResult]] | None = None,
    ) -> None:
        self.registry = registry
        self.health = health
        self.status = status
        self.reload = reload
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def serve_forever(self) -> None:
        """Until cancelled; the server's sockets stay open after (see ``stop``)."""
        assert self._server is not None, "start() first"
        await asyncio.Event().wait()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)).strip():
                pass  # headers are not needed (a POST /reload has no body)
            parts = request.decode("latin-1").split()
            method = parts[0] if parts else "GET"
            path = parts[1] if len(parts) > 1 else "/"
            status, ctype, body = await self._answer(method, path, writer)
            reason = _REASONS.get(status, "Error")
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(
        self, method: str, path: str, writer: asyncio.StreamWriter
    ) -> tuple[int, str, bytes]:
        if path.startswith("/reload") and self.reload is not None:
            if method != "POST":
                return 405, "text/plain", b"POST /reload\n"
            if not _loopback(writer.get_extra_info("peername")):
                return 403, "text/plain", b"reload is taken from this machine only\n"
            result = await self.reload()
            return RELOAD_STATUS[result.outcome], "application/json", _json(result.to_json())
        if path.startswith("/metrics"):
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path.startswith("/healthz"):
            report = self.health()
            return (200 if report.get("ok") else 503), "application/json", _json(report)
        if path.startswith("/status") and self.status is not None:
            return 200, "application/json", _json(self.status())
        return 404, "text/plain", b"not found\n"


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def _loopback(peer: Any) -> bool:
    try:
        address = ipaddress.ip_address(peer[0])
    except (TypeError, ValueError, IndexError):
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))
