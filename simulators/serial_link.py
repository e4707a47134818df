"""A virtual null-modem cable: two pseudo-terminals whose bytes are copied across.

Why: Modbus RTU runs on RS-232/RS-485 lines; with this, the PLC simulator serves RTU on
one end and the agent polls the other, over real serial-port code (pyserial, termios)
and no hardware. ``socat pty,raw pty,raw`` does the same where socat is installed. A
pseudo-terminal has no parity to emulate, and Linux refuses to set even parity on one
that was opened before: use ``parity = "N"`` across it.

    async with SerialLink() as link:
        await plc.start_serial(link.device_port)
        ...  # the agent's url: f"modbus+rtu://{link.host_port}"
"""

from __future__ import annotations

import asyncio
import os
import pty
import tty
from types import TracebackType
from typing import Self


class SerialLink:
    """Two pseudo-terminal ends, ``device_port`` and ``host_port``, wired to each other."""

    def __init__(self) -> None:
        self._ends: list[tuple[int, int]] = []  # (controller fd, terminal fd) per end
        self.device_port = ""
        self.host_port = ""

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        for _ in range(2):
            controller, terminal = pty.openpty()
            tty.setraw(terminal)  # no echo, no line discipline: bytes pass as they are
            os.set_blocking(controller, False)
            self._ends.append((controller, terminal))
        (first, first_terminal), (second, second_terminal) = self._ends
        self.device_port = os.ttyname(first_terminal)
        self.host_port = os.ttyname(second_terminal)
        loop.add_reader(first, self._copy, first, second)
        loop.add_reader(second, self._copy, second, first)
        return self

    @staticmethod
    def _copy(source: int, target: int) -> None:
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, OSError):
            return  # nothing yet, or the other side closed its end for now
        os.write(target, data)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        for controller, terminal in self._ends:
            loop.remove_reader(controller)
            os.close(controller)
            os.close(terminal)
        self._ends.clear()
