"""structlog set-up: JSON lines for journald and files, readable console in a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


class _StderrLoggerFactory:
    """A PrintLogger on whatever ``sys.stderr`` is at the time of the call: a stream
    captured when logging was configured may be closed since (pytest swaps it per test)."""

    def __call__(self, *args: object) -> structlog.PrintLogger:
        return structlog.PrintLogger(sys.stderr)


def configure(level: str = "info", fmt: Literal["auto", "console", "json"] = "auto") -> None:
    use_console = sys.stderr.isatty() if fmt == "auto" else fmt == "console"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    # pymodbus and asyncio log through stdlib logging; keep their noise out of the journal
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
