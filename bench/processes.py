"""Child processes of the benchmarks (gateways, simulators) and how they are stopped."""

from __future__ import annotations

import signal
import subprocess


def stop(process: subprocess.Popen[bytes], sig: signal.Signals, timeout_s: float) -> None:
    """Ask ``process`` to stop with ``sig`` (the one it stops cleanly on, flushing what it
    holds); kill it if it has not within ``timeout_s``, so that no bench leaves it behind."""
    process.send_signal(sig)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
