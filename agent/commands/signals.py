"""Signals a running command answers: SIGINT and SIGTERM stop it cleanly, SIGHUP reloads.

A module of its own so that every long-running command (run, collect, demo, the
simulators) installs the same handlers without importing the CLI.
"""

from __future__ import annotations

import asyncio
import signal


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


def install_reload_signal(reload: asyncio.Event) -> None:
    """SIGHUP (``systemctl reload``: ``ExecReload=/bin/kill -HUP $MAINPID``) asks for a
    reload instead of ending the process (exit 129, its default action)."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload.set)
