"""systemd readiness and watchdog notifications (Type=notify, WatchdogSec=).

The protocol is one datagram per message to $NOTIFY_SOCKET, which does not earn a
dependency. The watchdog ping runs on the agent's event loop, so a loop that hangs stops
pinging and systemd restarts the service; so does one whose tasks are failing or stalled.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger()


def notify(message: str) -> bool:
    """Send one sd_notify message; False when not running under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)  # never stall the event loop on a full notify queue
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the configured watchdog timeout, or None when the watchdog is off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


async def keep_watchdog_fed(interval_s: float, unwell: Callable[[], dict[str, str]]) -> None:
    """Ping every ``interval_s`` while ``unwell()`` is empty (every task alive, windows
    closing): a stalled or crash-looping agent stops pinging, and systemd restarts it."""
    withheld = False
    while True:
        problems = unwell()
        if not problems:
            notify("WATCHDOG=1")
            if withheld:
                log.info("watchdog fed again")
            withheld = False
        elif not withheld:
            log.error("watchdog not fed: the agent is not making progress", problems=problems)
            withheld = True
        await asyncio.sleep(interval_s)
