"""Agent CPU per MQTT message next to a bare paho subscriber, for 1- and 100-value payloads.

Why: a gateway's MQTT load is messages per second, and paho already spends a good part of a
message's cost reading it off the socket in Python. This measures what the agent adds on
top (JSON decode, tag mapping, frames, batching, Parquet) against two floors in the same
run, same broker, same publisher: a bare paho subscriber (``loop_start``) whose handler
only counts, and one that also ``json.loads`` the payload.

A private broker (mosquitto; amqtt where mosquitto is missing or with
``EDGE_AGENT_MQTT_BROKER=amqtt``, every client then speaking MQTT 3.1.1) runs on a free
port; the publisher is a separate process (this script with ``--publish``) sending QoS 0
messages at a fixed rate on absolute ticks, so neither its CPU nor the broker's is
counted. Payloads:

- ``single``: a plain number on ``bench/single/t<i>``, 100 topics in turn, 100 tags mapped
  by the pattern ``bench/single/{tag}`` (receive-time timestamps);
- ``json100``: ``{"ts": <epoch ms>, "values": {"t0": .., .. "t99": ..}}`` on ``bench/json``,
  100 tags with ``value = "$.values.{tag}"`` and ``timestamp = "$.ts"``.

    python bench/bench_mqtt.py            # --single-rate 4000 --json-rate 400 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import paho.mqtt
import paho.mqtt.client as mqtt
from bench_modbus import cpu_seconds
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.load import parse_config
from agent.ops.logs import configure
from agent.runtime import Agent
from simulators.mqtt_broker import private_broker

TAGS = 100
LOOPS = ("bare", "bare+json", "agent")


def payloads(kind: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` distinct (topic, payload) messages of a kind, stamped at publish time."""
    now_ms = time.time_ns() // 1_000_000
    if kind == "single":
        return [
            (f"bench/single/t{i % TAGS}", repr(round(50 + 10 * math.sin(i / 7), 3)).encode())
            for i in range(count)
        ]
    return [
        (
            "bench/json",
            json.dumps(
                {
                    "ts": now_ms + i,
                    "values": {
                        f"t{k}": round(50 + 10 * math.sin((i + k) / 7), 3) for k in range(TAGS)
                    },
                }
            ).encode(),
        )
        for i in range(count)
    ]


def paho_client(version: str) -> mqtt.Client:
    """A paho client speaking ``version`` ("5" or "3.1.1"), the newest the broker does."""
    protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
    return mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)


def publish(url: str, kind: str, rate: int, seconds: float, version: str) -> int:
    """Publisher process: ``rate`` messages/s for ``seconds``, in 10 ms slices."""
    host, port = url.removeprefix("mqtt://").split(":")
    client = paho_client(version)
    client.connect(host, int(port))
    client.loop_start()
    slice_s = 0.01
    per_slice = max(1, round(rate * slice_s))
    messages = payloads(kind, 1000)
    start = time.monotonic()
    sent = 0
    for k in range(round(seconds / slice_s)):
        delay = start + k * slice_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for _ in range(per_slice):
            topic, payload = messages[sent % len(messages)]
            client.publish(topic, payload, qos=0)
            sent += 1
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()
    print(f"sent {sent}", flush=True)
    return 0


def agent_text(url: str, version: str, kind: str, out: Path) -> str:
    if kind == "single":
        keys = 'topic = "bench/single/{tag}"\n'
    else:
        keys = 'topic = "bench/json"\nvalue = "$.values.{tag}"\ntimestamp = "$.ts"\n'
    tags = "".join(f'[[sources.tags]]\nname = "t{i}"\n' for i in range(TAGS))
    return (
        f'[agent]\ngateway_id = "bench"\nmetrics = ""\nlog_level = "warning"\n'
        f'data_dir = "{out / "data"}"\n\n[batch]\nwindow = "1s"\n\n'
        f'[[uplinks]]\ntype = "parquet"\npath = "{out / "parquet"}"\n\n'
        f'[[sources]]\nname = "mqtt"\nprotocol = "mqtt"\nurl = "{url}"\nqos = 0\n'
        f'mqtt_version = "{version}"\n{keys}\n{tags}'
    )


class BareSubscriber:
    """The floor: paho's own network thread, a handler that counts (optionally parses)."""

    def __init__(self, url: str, version: str, kind: str, parse: bool) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages = 0
        self.subscribed = threading.Event()
        self.client = paho_client(version)
        self.client.on_message = self._parse if parse else self._count
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_connect = lambda client, *_: client.subscribe(
            "bench/single/+" if kind == "single" else "bench/json", qos=0
        )
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _count(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.messages += 1

    def _parse(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        json.loads(message.payload)
        self.messages += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def measured(
    count: Callable[[], int], url: str, version: str, kind: str, rate: int, args: argparse.Namespace
) -> tuple[float, int, int]:
    """Run the publisher; (CPU s, messages) over ``--duration`` after ``--warmup``, sent."""
    command = [sys.executable, __file__, "--publish", url, "--kind", kind, "--rate", str(rate)]
    command += ["--mqtt-version", version]
    command += ["--seconds", str(args.warmup + args.duration)]
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
    await asyncio.sleep(args.warmup)
    cpu0, n0 = cpu_seconds(), count()
    await asyncio.sleep(args.duration)
    cpu, messages = cpu_seconds() - cpu0, count() - n0
    output, _ = await process.communicate()
    return cpu, messages, int(output.split()[-1])


async def run_loop(
    loop: str, url: str, version: str, kind: str, rate: int, args: argparse.Namespace
) -> tuple[float, int, int, int]:
    """(CPU s, messages measured, messages sent, messages received in all) for one loop."""
    if loop != "agent":
        bare = BareSubscriber(url, version, kind, parse=loop == "bare+json")
        await asyncio.to_thread(bare.subscribed.wait, 10)
        try:
            cpu, messages, sent = await measured(
                lambda: bare.messages, url, version, kind, rate, args
            )
            await asyncio.sleep(0.5)
            return cpu, messages, sent, bare.messages
        finally:
            bare.close()
    with tempfile.TemporaryDirectory() as tmp:
        text = agent_text(url, version, kind, Path(tmp))
        agent = Agent(parse_config(tomllib.loads(text), Path("b")))
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(0.5)  # connect and subscribe
        decoder = agent.runners[0].driver.decoder  # type: ignore[attr-defined]
        try:
            cpu, messages, sent = await measured(
                lambda: decoder.messages, url, version, kind, rate, args
            )
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await running
        return cpu, messages, sent, decoder.messages


async def bench(args: argparse.Namespace) -> list[str]:
    header = (
        f"{'payload':<8} {'loop':<10} {'msg/s':>7} {'values/s':>9} {'CPU %':>6} "
        f"{'CPU us/msg':>10} {'lost':>5}"
    )
    lines = [header, "-" * len(header)]
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        async with private_broker(Path(tmp)) as broker:
            lines.insert(0, f"broker: {broker.name}, MQTT {broker.mqtt_version()}\n")
            for kind, rate in (("single", args.single_rate), ("json100", args.json_rate)):
                per: dict[str, list[float]] = {loop: [] for loop in LOOPS}
                for round_ in range(args.repeat):
                    for loop in LOOPS:
                        print(f"{kind} @ {rate}/s, round {round_ + 1}: {loop} ...", flush=True)
                        cpu, messages, sent, received = await run_loop(
                            loop, broker.url, broker.mqtt_version(), kind, rate, args
                        )
                        per_msg = cpu / max(messages, 1)
                        per[loop].append(per_msg)
                        values = messages * (1 if kind == "single" else TAGS)
                        lines.append(
                            f"{kind:<8} {loop:<10} {messages / args.duration:>7.0f} "
                            f"{values / args.duration:>9.0f} {100 * cpu / args.duration:>6.1f} "
                            f"{per_msg * 1e6:>10.1f} {sent - received:>5}"
                        )
                medians = {loop: statistics.median(per[loop]) * 1e6 for loop in LOOPS}
                summary.append(
                    f"{kind}: bare {medians['bare']:.1f}, bare+json {medians['bare+json']:.1f}, "
                    f"agent {medians['agent']:.1f} us CPU/msg (median); agent/bare "
                    f"{medians['agent'] / medians['bare']:.2f}x, agent/bare+json "
                    f"{medians['agent'] / medians['bare+json']:.2f}x"
                )
    return [*lines, "", *summary]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--single-rate", type=int, default=4000, help="messages/s, 1 value each")
    parser.add_argument("--json-rate", type=int, default=400, help="messages/s, 100 values each")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--publish", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="single", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--mqtt-version", default="5", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        return publish(args.publish, args.kind, args.rate, args.seconds, args.mqtt_version)
    configure("warning")
    lines = asyncio.run(bench(args))
    print(
        f"\npaho-mqtt {paho.mqtt.__version__}, QoS 0, "
        f"warm-up {args.warmup:g} s, measured {args.duration:g} s, {args.repeat} round(s)\n"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
