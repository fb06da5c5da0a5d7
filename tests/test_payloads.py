"""The fast labels payload (one f-string) is byte for byte the plain one (``labels_body``
through the JSON encoder), whatever the labels, names and numbers."""

from __future__ import annotations

import json
import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.payloads import encode, labels_body, labels_payload
from agent.records import LabelScore, Result

EDGE_FLOATS = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-7, 1e16, 1e22,
               1.7976931348623157e308, -1.7976931348623157e308, 0.1 + 0.2, 1 / 3,
               math.inf, -math.inf, math.nan]
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(EDGE_FLOATS)
texts = st.text(max_size=24) | st.sampled_from(
    ["", "ä", "猫", "🐈", "\u2028", "\x00", '"', "\\", "\x7f", "naïve \"quoted\" \\ back"])
label_scores = st.builds(LabelScore, texts, st.integers(-(2**63), 2**63), numbers)
results = st.builds(
    Result, seq=st.integers(0, 2**63), source=texts, frame_index=st.integers(-(2**63), 2**63),
    frame_ts=numbers, frame_mono=numbers, labels=st.tuples() | st.lists(
        label_scores, max_size=5).map(tuple), inference_ms=numbers, preprocess_ms=numbers,
    model_name=texts, model_version=texts)


@settings(max_examples=1500, deadline=None)
@given(result=results, run_id=texts, now=numbers, mono_now=numbers)
@example(result=Result(1, "cam", 0, 1.5, 2.5, (LabelScore("ä 猫", 3, 0.1 + 0.2),), 1e-7, 1e16,
                       "m", "1.0"), run_id="r", now=1_700_000_000.123456789, mono_now=1e22)
def test_fast_labels_payload_is_the_plain_encoding(result: Result, run_id: str, now: float,
                                                   mono_now: float) -> None:
    fast = labels_payload(result, run_id, now, mono_now)
    assert fast == encode(labels_body(result, run_id, now, mono_now))
    if b"NaN" not in fast and b"Infinity" not in fast:
        assert list(json.loads(fast)) == list(labels_body(result, run_id, now, mono_now))
