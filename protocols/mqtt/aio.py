"""One paho-mqtt connection driven by the asyncio event loop, without blocking it.

paho's network loop is three calls (``loop_read``, ``loop_write``, ``loop_misc``) plus
socket callbacks; here the socket is watched with ``loop.add_reader``/``add_writer`` and
``loop_misc`` (keepalive) runs once a second, so no paho thread exists and every paho
callback runs on the event loop. The one blocking step, opening the TCP connection and the
TLS handshake inside ``Client.connect``, runs in a short-lived daemon thread: cancelling a
connect returns at once, and the thread closes whatever socket it ends up with.

There is no automatic reconnect: a lost connection resolves :attr:`AsyncMqttClient.lost`
and the owner ends its session, leaving retry and backoff to the agent's supervisor.
A read burst (everything readable right now, up to ``max_burst`` packets) ends with one
``on_burst`` call, which is where the driver turns the burst's messages into one frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

_MISC_INTERVAL_S = 1.0


class AsyncMqttClient:
    """Wraps a configured ``paho.mqtt.client.Client`` (VERSION2 callbacks) for asyncio.

    Set ``client.on_message`` (and ``on_subscribe`` ...) before :meth:`connect`; this
    class owns ``on_connect``, ``on_disconnect`` and the socket callbacks.
    """

    def __init__(
        self,
        client: mqtt.Client,
        on_burst: Callable[[], None] | None = None,
        max_burst: int = 1024,
    ) -> None:
        self.client = client
        self.on_burst = on_burst
        self.max_burst = max_burst
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = None
        self._paused = False
        self._misc: asyncio.Task[None] | None = None
        self._connack: asyncio.Future[mqtt.ConnectFlags] = self._loop.create_future()
        self.lost: asyncio.Future[str] = self._loop.create_future()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect

    # -- connection -------------------------------------------------------------------------

    async def connect(
        self,
        host: str,
        port: int,
        keepalive_s: int,
        timeout_s: float,
        clean_start: bool | None = None,
        properties: Properties | None = None,
    ) -> mqtt.ConnectFlags:
        """Open the connection and wait for the broker's CONNACK; raises ConnectionError.

        ``clean_start`` is MQTT 5's flag; MQTT 3.1.1 sets clean_session on the Client.
        """
        self.client.connect_timeout = timeout_s
        opened: asyncio.Future[None] = self._loop.create_future()
        loop = self._loop

        def blocking_connect() -> None:
            error: BaseException | None = None
            try:
                if clean_start is None:
                    self.client.connect(host, port, keepalive_s)
                else:
                    self.client.connect(
                        host, port, keepalive_s, clean_start=clean_start, properties=properties
                    )
            except BaseException as exc:
                error = exc

            def finish() -> None:
                if opened.cancelled():
                    self._close_socket()
                elif error is not None:
                    opened.set_exception(error)
                else:
                    opened.set_result(None)

            try:
                loop.call_soon_threadsafe(finish)
            except RuntimeError:  # the loop is gone: nobody will use this socket
                self._close_socket()

        threading.Thread(
            target=blocking_connect, name=f"mqtt-connect-{host}:{port}", daemon=True
        ).start()
        try:
            await opened
        except ssl.SSLCertVerificationError as exc:
            raise ConnectionError(
                f"TLS: the certificate of {host}:{port} was refused ({exc.verify_message}); "
                "check ca_file, or the host name in the url (tls_insecure skips that check)"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectionError(f"TLS handshake with {host}:{port} failed: {exc}") from None
        except (OSError, ValueError) as exc:
            raise ConnectionError(f"cannot connect to {host}:{port}: {exc}") from None
        self._watch()
        self._misc = asyncio.create_task(self._misc_loop(), name=f"mqtt-misc-{host}:{port}")
        try:
            return await asyncio.wait_for(asyncio.shield(self._connack), timeout_s)
        except TimeoutError:
            raise ConnectionError(f"{host}:{port} sent no CONNACK within {timeout_s} s") from None

    def _watch(self) -> None:
        """Start watching the socket ``connect`` opened and install the socket callbacks."""
        client = self.client
        sock = client.socket()
        if sock is None:
            raise ConnectionError("the connection closed during the handshake")
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._readable)
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        if client.want_write():
            self._loop.add_writer(self._fd, self._writable)

    async def close(self) -> None:
        """Say goodbye if connected (DISCONNECT), then release the socket; never raises."""
        if self._misc is not None:
            self._misc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._misc
            self._misc = None
        if self.client.is_connected():
            with contextlib.suppress(Exception):
                self.client.disconnect()
                self.client.loop_write()  # a few bytes: the non-blocking send completes
        self._close_socket()
        if not self.lost.done():
            self.lost.set_result("closed")

    def _close_socket(self) -> None:
        self._unwatch()
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _unwatch(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None

    # -- flow control ------------------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading the socket: TCP flow control then holds the broker back."""
        if not self._paused and self._fd is not None:
            self._loop.remove_reader(self._fd)
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused and self._fd is not None:
            self._loop.add_reader(self._fd, self._readable)
            self._loop.call_soon(self._readable)  # TLS may hold decrypted bytes already
        self._paused = False

    # -- event loop callbacks -------------------------------------------------------------

    def _readable(self) -> None:
        client = self.client
        for _ in range(self.max_burst):
            if self._paused or client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            sock = client.socket()
            if not (_has_buffered(sock) or _readable_now(sock)):
                break
        else:
            # burst limit: let other tasks run, then continue with what is buffered
            if client.socket() is not None and not self._paused:
                self._loop.call_soon(self._readable)
        if self.on_burst is not None:
            self.on_burst()

    def _writable(self) -> None:
        self.client.loop_write()

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(_MISC_INTERVAL_S)
            self.client.loop_misc()

    # -- paho callbacks ----------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connack.done():
            return
        if reason.is_failure:
            self._connack.set_exception(
                ConnectionError(f"the broker refused the connection: {reason}")
            )
        else:
            self._connack.set_result(flags)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        by = "the broker closed the session" if flags.is_disconnect_packet_from_server else "lost"
        text = f"connection {by}: {reason}"
        if not self._connack.done():
            self._connack.set_exception(ConnectionError(text))
        if not self.lost.done():
            self.lost.set_result(text)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._unwatch()

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._fd is not None:
            self._loop.add_writer(self._fd, self._writable)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._fd is not None:
            self._loop.remove_writer(self._fd)


def _has_buffered(sock: Any) -> bool:
    """True if a TLS socket holds decrypted bytes the fd's readiness does not show."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def _readable_now(sock: Any) -> bool:
    """True if the kernel has bytes for the socket now (a zero-timeout poll, no read)."""
    if sock is None:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, ssl.SSLError, OSError, ValueError):
        return False
