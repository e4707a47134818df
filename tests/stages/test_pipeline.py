"""The pipeline as configured from TOML: stage order, lineage in batches, drop counters."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from agent.acquisition import quality as q
from agent.acquisition.frame import Frame
from agent.config.load import ConfigError, LoadedConfig, parse_config
from agent.runtime import Agent
from agent.windows.batch import Batcher, TagTable
from tests.stages.helpers import T0, S, frame

TAGS = """
[[sources.tags]]
name = "speed"
unit = "rpm"
range = [0, 24000]
range_action = "drop"
swinging_door = { deviation = "0.5%", max_interval = "10s" }

[[sources.tags]]
name = "temp"
unit = "degF"
convert_to = "degC"
range = [-40, 200]
spike = { max_rate = 5.0 }
fill = { max_gap = "2s" }
deadband = 0.5

[[sources.tags]]
name = "vib"
unit = "mm/s"
features = { window = "1s", stats = ["rms", "peak"] }
"""


def loaded(tags: str = TAGS) -> LoadedConfig:
    text = '[agent]\nmetrics = ""\n[[sources]]\nname = "s"\nprotocol = "template"\n' + tags
    return parse_config(tomllib.loads(text), Path("test.toml"))


def test_lineage_names_every_parameter_and_the_derived_tags() -> None:
    table = TagTable(loaded().config.sources)
    assert table.qualified == ["s/speed", "s/temp", "s/vib", "s/vib.rms", "s/vib.peak"]
    speed, temp, vib, rms, _ = table.lineage
    assert speed["swinging_door"] == {
        "deviation": 120.0,
        "deviation_of_span": "0.5%",
        "max_interval": "10s",
    }
    assert speed["range"] == [0.0, 24000.0]
    assert speed["range_action"] == "drop"
    assert temp["unit"] == "degC"
    assert temp["source_unit"] == "degF"
    assert temp["deadband"] == {"deviation": 0.5, "max_interval": "10m"}
    assert temp["spike"]["max_rate"] == 5.0
    assert temp["fill"] == {"max_gap": "2s"}
    assert "range_action" not in vib
    assert rms == {
        "unit": "mm/s",
        "derived_from": "s/vib",
        "feature": "rms",
        "window": "1s",
        "stamp": "window start",
    }


async def test_agent_pipeline_drops_flags_counts_and_writes_lineage() -> None:
    agent = Agent(loaded())
    out: list[Frame] = []
    agent.batcher.add = lambda _index, added: out.append(added)  # type: ignore[method-assign]
    runner = agent.runners[0]
    times = T0 + np.array([0, 500, 1200]) * 1_000_000
    # speed: 30000 is out of range and dropped; temp: 1000 degF flagged; vib feeds features
    await runner.emit(frame([0, 1, 2], [times[0]] * 3, [100.0, 212.0, 1.0]))
    await runner.emit(frame([0, 1, 2], [times[1]] * 3, [30000.0, 1000.0, -3.0]))
    await runner.emit(frame([0, 1, 2], [times[2]] * 3, [200.0, 213.0, 2.0]))
    registry = agent.metrics.registry
    assert registry.get_sample_value("edge_agent_points_in_total", {"source": "s"}) == 9
    assert runner.points == 9, "received samples count before the pipeline drops any"
    dropped = "edge_agent_points_dropped_total"
    assert registry.get_sample_value(dropped, {"source": "s", "reason": "out_of_range"}) == 1
    bad = "edge_agent_points_bad_total"
    assert registry.get_sample_value(bad, {"source": "s", "reason": "out_of_range"}) == 1
    temp = [(f.value[f.tag == 1], f.quality[f.tag == 1]) for f in out]
    assert temp[0][0].tolist() == pytest.approx([100.0])  # 212 degF
    assert temp[1][1].tolist() == [q.make(q.BAD, q.Reason.OUT_OF_RANGE)]
    derived = [f for f in out if (f.tag >= 3).any()]
    assert len(derived) == 1, "the 1 s window of vib closes with the third frame"
    rms = derived[0].value[derived[0].tag == 3]
    assert rms.tolist() == pytest.approx([np.sqrt((1 + 9) / 2)])
    batcher = Batcher(agent.tag_table, S, 0, "gw", "hash")
    for f in out:
        batcher.add(0, f)
    batches = batcher.flush()
    lineage = json.loads(batches[0].table.schema.metadata[b"edge_agent.tags"])
    assert lineage["s/speed"]["swinging_door"]["deviation"] == 120.0
    assert any(
        "s/vib.rms" in json.loads(b.table.schema.metadata[b"edge_agent.tags"]) for b in batches
    )


def test_a_derived_tag_may_not_shadow_a_configured_one() -> None:
    tags = '[[sources.tags]]\nname = "v"\nfeatures = {}\n[[sources.tags]]\nname = "v.rms"\n'
    with pytest.raises(ConfigError, match=r"sources\[0\]\.tags: tag name v\.rms is used twice"):
        loaded(tags)


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ('deadband = "1%"', "deadband.deviation '1%' is a percentage of the range span"),
        ("deadband = -1", "sources[0].tags[0].deadband.deviation: expected a non-negative"),
        ('swinging_door = { deviation = "x%" }', "swinging_door.deviation: expected a percent"),
        ("spike = { window = 2 }", "spike needs max_rate and/or a Hampel window of at least 3"),
        ("range = [5, 1]", "sources[0].tags[0].range: expected [min, max] with min < max"),
        ('denoise = { wavelet = "nope" }', "denoise.wavelet: unknown discrete wavelet 'nope'"),
        ('features = { stats = ["median"] }', "sources[0].tags[0].features.stats[0]"),
    ],
)
def test_processing_config_errors_name_the_key(tag: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        loaded(f'[[sources.tags]]\nname = "x"\n{tag}\n')
    assert message in str(error.value)
    assert str(error.value).startswith("test.toml: sources[0].tags[0]")
