"""Every stage at once on arbitrary frames (bad samples, NaN, repeats): well-formed output."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.acquisition import quality as q
from agent.acquisition.pipeline import SourcePipeline, derived_tags
from agent.config.model import TagConfig
from tests.stages.helpers import T0, frame

ALL = {
    "unit": "degF",
    "convert_to": "degC",
    "range": [-50.0, 50.0],
    "spike": {"max_rate": 100.0, "window": 5},
    "fill": {"max_gap": "1s"},
    "denoise": {},
    "deadband": "1%",
    "swinging_door": {"deviation": 0.5, "max_interval": "2s"},
    "features": {"window": "500ms"},
}
QUALITIES = [q.GOOD, q.make(q.BAD, q.Reason.COMM_ERROR), q.make(q.UNCERTAIN, q.Reason.NONE)]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_all_stages_produce_well_formed_frames(data: st.DataObject) -> None:
    tags = [TagConfig.model_validate({"name": f"t{i}", "rate": "100ms", **ALL}) for i in range(3)]
    tags.append(TagConfig(name="plain"))
    pipeline = SourcePipeline(tags)
    count = len(tags) + len(derived_tags(tags, "s"))
    now = T0
    received = passed = 0
    for _ in range(data.draw(st.integers(1, 8))):
        n = data.draw(st.integers(0, 40))
        tag = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
        step = data.draw(st.lists(st.integers(0, 400_000_000), min_size=n, max_size=n))
        value = data.draw(
            st.lists(st.floats(-200, 200) | st.just(float("nan")), min_size=n, max_size=n)
        )
        quality = data.draw(st.lists(st.sampled_from(QUALITIES), min_size=n, max_size=n))
        times = now + np.cumsum(step, dtype=np.int64) if n else np.zeros(0, np.int64)
        now = int(times.max()) + 1 if n else now
        out = pipeline.process(frame(tag, times, value, quality))
        out.check(count)
        received += tag.count(3)
        passed += int((out.tag == 3).sum())
    pipeline.flush().check(count)
    assert passed == received, "a tag without stages passes untouched"
