"""CPU per value of the Sparkplug source's decode path next to a bare decoding loop of the
same protobuf library, in the same run (issue 18, acceptance 5: goal within 1.5x).

Why: decoding is where a Sparkplug host spends its CPU (one protobuf object per metric is
the library's, unavoidable), and a gateway reading a plant's namespace decodes every metric
of every node. This measures what the agent's decoder adds on top of the library: the alias
lookup through the birth table, the sequence check, timestamp checks, the value read by the
birth's data type, and the columns handed on as one Frame per read burst.

Both loops run in this process on the same pre-built DDATA payloads (no broker: the MQTT
session is the mqtt driver's, measured by bench_mqtt.py), interleaved in rounds so machine
noise hits both alike; the figure is the fastest round's CPU time (user + system) per
metric value (what the code costs; slower rounds are other processes' interference), the
medians beside it:

- ``bare``: ``Payload.FromString``, then per metric its alias, timestamp and value
  (``WhichOneof`` and ``getattr``) into Python lists, and one numpy array per column at the
  end of each burst, i.e. the least a host must do to have the values;
- ``agent``: ``SparkplugDecoder.decode`` of each message and ``take_frame`` per burst.

Payload shapes: DDATA of 100 Double metrics by alias (a device publishing a snapshot), and
of 10 mixed metrics (Double, Float, Int32, Boolean), each with its own timestamp.

    python bench/bench_sparkplug.py          # --messages 2000 --rounds 15 --burst 10
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_modbus import cpu_seconds

from protocols.sparkplug.config import SparkplugSourceConfig
from protocols.sparkplug.decoder import SparkplugDecoder
from protocols.sparkplug.schema import DataType, payload_class
from protocols.sparkplug.store import BirthStore

TOPIC = "spBv1.0/Bench/DDATA/Node1/Device1"
SHAPES: dict[str, list[tuple[DataType, str]]] = {
    "100 doubles": [(DataType.Double, "double_value")] * 100,
    "10 mixed": [
        (DataType.Double, "double_value"),
        (DataType.Float, "float_value"),
        (DataType.Int32, "int_value"),
        (DataType.Boolean, "boolean_value"),
    ]
    * 2
    + [(DataType.Double, "double_value")] * 2,
}


def births(shape: list[tuple[DataType, str]]) -> tuple[bytes, bytes]:
    Payload = payload_class()
    node = Payload(seq=0)
    node.metrics.add(name="bdSeq", datatype=DataType.UInt64, long_value=0)
    device = Payload(seq=1)
    for index, (datatype, _) in enumerate(shape):
        device.metrics.add(name=f"m{index}", alias=index + 1, datatype=datatype, is_null=True)
    return node.SerializeToString(), device.SerializeToString()


def messages(shape: list[tuple[DataType, str]], count: int) -> list[bytes]:
    Payload = payload_class()
    now_ms = time.time_ns() // 1_000_000
    out = []
    for i in range(count):
        payload = Payload(timestamp=now_ms + i, seq=(i + 2) % 256)
        for index, (_, field) in enumerate(shape):
            metric = payload.metrics.add(alias=index + 1, timestamp=now_ms + i)
            value = float(i + index)
            if field == "boolean_value":
                setattr(metric, field, bool((i + index) & 1))
            elif field == "int_value":
                setattr(metric, field, (i + index) & 0xFFFF)
            else:
                setattr(metric, field, value)
        out.append(payload.SerializeToString())
    return out


def bare_loop(data: list[bytes], burst: int) -> int:
    Payload = payload_class()
    values = 0
    for start in range(0, len(data), burst):
        aliases: list[int] = []
        stamps: list[int] = []
        numbers: list[Any] = []
        for raw in data[start : start + burst]:
            for metric in Payload.FromString(raw).metrics:
                aliases.append(metric.alias)
                stamps.append(metric.timestamp)
                numbers.append(getattr(metric, metric.WhichOneof("value")))
        columns = np.array(aliases), np.array(stamps), np.array(numbers, np.float64)
        values += len(columns[0])
    return values


def agent_loop(decoder: SparkplugDecoder, data: list[bytes], burst: int) -> int:
    values = 0
    now = time.time_ns()
    for start in range(0, len(data), burst):
        for raw in data[start : start + burst]:
            decoder.decode(TOPIC, raw, now)
        frame = decoder.take_frame(now)
        values += len(frame) if frame is not None else 0
    return values


def fresh_decoder(shape: list[tuple[DataType, str]], folder: Path) -> SparkplugDecoder:
    config = SparkplugSourceConfig.model_validate(
        {
            "name": "bench",
            "url": "mqtt://127.0.0.1:1883",
            "group": "Bench",
            "tags": [
                {"name": f"m{index}", "metric": f"m{index}", "device": "Device1"}
                for index in range(len(shape))
            ],
        }
    )
    decoder = SparkplugDecoder(config)
    decoder.attach(BirthStore(folder / "births"), None, lambda tag, name, lineage: None)
    node, device = births(shape)
    decoder.decode("spBv1.0/Bench/NBIRTH/Node1", node, time.time_ns())
    decoder.decode(TOPIC.replace("DDATA", "DBIRTH"), device, time.time_ns())
    return decoder


def measure(run: Callable[[], int]) -> float:
    """CPU seconds per value of one run."""
    started = cpu_seconds()
    values = run()
    return (cpu_seconds() - started) / values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--burst", type=int, default=10, help="messages per frame")
    args = parser.parse_args()
    print(
        f"{'payload':<12} {'bare us/value':>14} {'agent us/value':>15} {'ratio':>6}"
        f"   (fastest round; medians: bare, agent, ratio)"
    )
    with tempfile.TemporaryDirectory() as folder:
        for name, shape in SHAPES.items():
            data = messages(shape, args.messages)
            decoder = fresh_decoder(shape, Path(folder) / name.replace(" ", "-"))
            table = decoder.nodes[("Bench", "Node1")].devices["Device1"]
            assert all(b.tag >= 0 for b in table.names.values()), "every metric feeds a tag"
            bare, agent = [], []
            for _ in range(args.rounds):
                bare.append(measure(functools.partial(bare_loop, data, args.burst)))
                agent.append(measure(functools.partial(agent_loop, decoder, data, args.burst)))
                decoder.take_errors()  # each round starts the seq anew: gaps, nothing else
            b, a = min(bare), min(agent)
            mb, ma = statistics.median(bare), statistics.median(agent)
            print(
                f"{name:<12} {b * 1e6:>14.3f} {a * 1e6:>15.3f} {a / b:>6.2f}"
                f"   ({mb * 1e6:.3f}, {ma * 1e6:.3f}, {ma / mb:.2f})"
            )


if __name__ == "__main__":
    main()
