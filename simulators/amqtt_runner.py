"""``python -m simulators.amqtt_runner CONFIG.json``: the amqtt broker of ``AmqttBroker``.

amqtt's own command stops only on Ctrl-C and cannot require client certificates (its TLS
listeners ask for one but accept a client without); this runner shuts the broker down
cleanly on SIGTERM, as ``PrivateBroker.stop()`` sends it, and requires a certificate when
the config says ``"require_certificate": true``, as mosquitto's ``require_certificate``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from amqtt.broker import Broker


class _Broker(Broker):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's broker whose TLS listeners refuse a client without a certificate."""

    @staticmethod
    def _create_ssl_context(listener: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = Broker._create_ssl_context(listener)
        context.verify_mode = ssl.CERT_REQUIRED
        return context


async def serve(config: dict[str, Any]) -> None:
    """Run the broker until SIGTERM or SIGINT, then shut it down (sessions, sockets)."""
    broker_type = _Broker if config["require_certificate"] else Broker
    broker = broker_type(config["broker"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await broker.start()
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
