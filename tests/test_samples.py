"""SequenceWindower: payload parsing, rejection messages, window/stride behaviour; SampleSource:
windows into frames, per stream, for the model serving now."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.capture.samples import SampleSource, SequenceWindower
from agent.config import MqttSourceConfig
from agent.contract import Topics
from agent.errors import SampleError
from agent.manifest import WindowSpec
from agent.records import Frame

F = 3


def windower(length: int = 4, stride: int = 2, features: int = F, **kw: int) -> SequenceWindower:
    return SequenceWindower(WindowSpec(length=length, stride=stride, features=features), **kw)


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


GOOD = [
    pytest.param(b"[1, 2, 3]", [[1, 2, 3]], id="flat-one-step"),
    pytest.param(b"[1, 2, 3, 4, 5, 6]", [[1, 2, 3], [4, 5, 6]], id="flat-two-steps"),
    pytest.param(b"[[1, 2, 3], [4.5, -5, 6e2]]", [[1, 2, 3], [4.5, -5, 600]], id="nested"),
    pytest.param(b"[0.1,0.2,0.3]", [[0.1, 0.2, 0.3]], id="compact-floats"),
    pytest.param(b" \n[1, 2, 3]\n", [[1, 2, 3]], id="json-with-blanks"),
    pytest.param(f32(1, 2, 3), [[1, 2, 3]], id="float32-one-step"),
    pytest.param(f32(*range(6)), [[0, 1, 2], [3, 4, 5]], id="float32-two-steps"),
    # float32 bytes whose first byte is '[' (0x5B) and that hold non-ASCII bytes
    pytest.param(b"[\x00\x80\xbf" + f32(2, 3), [[struct.unpack("<f", b"[\x00\x80\xbf")[0], 2, 3]],
                 id="float32-starting-with-bracket"),
]

BAD = [
    pytest.param(b"", "empty sample", id="empty"),
    pytest.param(b"[]", "empty list", id="empty-list"),
    pytest.param(b"[1, 2, 3, 4, 5, 6, 7]", "sample has 7 values; expected a multiple of 3",
                 id="flat-wrong-count"),
    pytest.param(b"[[1, 2, 3], [4, 5]]", "timestep 1 has 2 values; expected 3", id="ragged"),
    pytest.param(b"[[1, 2, 3], 4]", "item at 1 is a number; expected a list of 3",
                 id="mixed-nesting"),
    pytest.param(b'[1, 2, "3"]', "value at 2 is not a number", id="string-value"),
    pytest.param(b"[1, 2, true]", "value at 2 is not a number", id="bool-value"),
    pytest.param(b"[1, null, 3]", "value at 1 is not a number", id="null-value"),
    pytest.param(b'[1, 2, {"a": 1}]', "value at 2 is not a number", id="object-value"),
    pytest.param(b"[1, [2], 3]", "value at 1 is not a number", id="list-in-flat"),
    pytest.param(b"[1, 2, NaN]", "value at 2 is nan; values must be finite", id="nan"),
    pytest.param(b"[1, Infinity, 3]", "value at 1 is inf", id="inf"),
    pytest.param(b"[1, 2, 1e400]", "value at 2 is inf", id="overflow-literal"),
    pytest.param(b"[1, 2, 1e39]", "outside the float32 range", id="beyond-float32"),
    pytest.param(b"[1, 2, " + b"9" * 400 + b"]", "value at 2 is out of range", id="huge-int"),
    pytest.param(b"[1, 2, 3", "not valid JSON", id="truncated-json"),
    pytest.param(b"[1, 2, 3,]", "not valid JSON", id="trailing-comma"),
    pytest.param(b'{"values": [1, 2, 3]}', "a JSON sample must be a list, got an object",
                 id="json-object"),
    pytest.param(b"  [1, 2, x]", "not valid JSON", id="blank-then-bad-json"),
    pytest.param(b"x" * 13, "not JSON and not float32 bytes (13 bytes is not a multiple of 4)",
                 id="odd-bytes"),
    pytest.param(f32(1, 2, 3, 4), "sample has 4 float32 values; expected a multiple of 3",
                 id="float32-wrong-count"),
    pytest.param(f32(1, float("nan"), 3), "value at 1 is nan", id="float32-nan"),
    pytest.param(f32(1, 2, float("-inf")), "value at 2 is -inf", id="float32-inf"),
    pytest.param(b"[" * 5000 + b"]" * 5000, "not valid JSON", id="deep-nesting"),
    pytest.param(b"[1, 2, 3]" + b" " * 70_000, "70009 bytes; the limit is 65536", id="too-big"),
]


@pytest.mark.parametrize(("payload", "expected"), GOOD)
def test_good_payloads_parse(payload: bytes, expected: list[list[float]]) -> None:
    rows = windower().parse(payload)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, np.array(expected, np.float32))


@pytest.mark.parametrize(("payload", "message"), BAD)
def test_bad_payloads_are_rejected_with_a_reason(payload: bytes, message: str) -> None:
    w = windower()
    with pytest.raises(SampleError) as info:
        w.add("s", payload)
    assert message in str(info.value)
    assert w.streams == []


def test_bad_stream_name_is_rejected() -> None:
    with pytest.raises(SampleError, match="stream name"):
        windower().add("a/b", b"[1, 2, 3]")


def test_first_window_then_every_stride() -> None:
    w = windower(length=4, stride=2, features=1)
    emitted = {t: w.add("s", json.dumps([t]).encode()) for t in range(10)}
    got = {t: [win[:, 0].tolist() for win in wins] for t, wins in emitted.items() if wins}
    assert got == {3: [[0, 1, 2, 3]], 5: [[2, 3, 4, 5]], 7: [[4, 5, 6, 7]], 9: [[6, 7, 8, 9]]}


def test_one_sample_can_complete_several_windows() -> None:
    w = windower(length=4, stride=2, features=1)
    wins = w.add("s", f32(*range(9)))
    assert [win[:, 0].tolist() for win in wins] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    assert [win[:, 0].tolist() for win in w.add("s", f32(9))] == [[6, 7, 8, 9]]


def test_stride_longer_than_window_skips_timesteps() -> None:
    w = windower(length=2, stride=5, features=1)
    wins = [win[:, 0].tolist() for t in range(13) for win in w.add("s", f32(t))]
    assert wins == [[0, 1], [5, 6], [10, 11]]


def test_windows_are_copies_with_the_right_shape() -> None:
    w = windower(length=3, stride=1, features=2)
    first = w.add("s", b"[[1, 2], [3, 4], [5, 6]]")[0]
    assert first.shape == (3, 2) and first.dtype == np.float32
    w.add("s", b"[7, 8]")
    np.testing.assert_array_equal(first, [[1, 2], [3, 4], [5, 6]])
    first[0, 0] = 99
    assert w.add("s", b"[9, 10]")[0].tolist() == [[5, 6], [7, 8], [9, 10]]


def test_streams_are_independent() -> None:
    w = windower(length=2, stride=1, features=1)
    assert w.add("a", b"[1]") == [] and w.add("b", b"[10]") == []
    assert w.add("a", b"[2]")[0][:, 0].tolist() == [1, 2]
    assert w.add("b", b"[20]")[0][:, 0].tolist() == [10, 20]


def test_rejected_sample_leaves_the_buffer_unchanged() -> None:
    w = windower(length=2, stride=1, features=1)
    w.add("s", b"[1]")
    with pytest.raises(SampleError):
        w.add("s", b"[NaN]")
    assert w.add("s", b"[2]")[0][:, 0].tolist() == [1, 2]


def test_too_many_streams_evicts_the_idle_one() -> None:
    w = windower(length=2, stride=1, features=1, max_streams=2)
    w.add("a", b"[1]")
    w.add("b", b"[1]")
    w.add("a", b"[2]")
    w.add("c", b"[1]")
    assert w.streams == ["a", "c"] and w.evicted == 1
    assert w.add("b", b"[2]") == []


def test_payload_limit_is_configurable() -> None:
    w = windower(max_payload_bytes=16)
    with pytest.raises(SampleError, match="17 bytes; the limit is 16"):
        w.add("s", b"[1, 2, 3]" + b" " * 8)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_sample_error(payload: bytes) -> None:
    w = windower(length=3, stride=1, features=2)
    try:
        wins = w.add("s", payload)
    except SampleError:
        return
    for win in wins:
        assert win.shape == (3, 2) and np.isfinite(win).all()


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=3),
                    lambda c: st.lists(c, max_size=6), max_leaves=20))
def test_random_json_never_raises_anything_but_sample_error(obj: object) -> None:
    payload = json.dumps(obj).encode()
    try:
        rows = windower(features=2).parse(payload)
    except SampleError:
        return
    assert rows.ndim == 2 and rows.shape[1] == 2 and np.isfinite(rows).all()


class Sample:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload = topic, payload


class FrameList(list):
    def put(self, frame: Frame) -> None:
        self.append(frame)


def sample_source(window: list[WindowSpec], **cfg: object) -> tuple[SampleSource, FrameList]:
    frames = FrameList()
    config = MqttSourceConfig.model_validate({"type": "mqtt", "name": "imu", **cfg})
    return SampleSource(config, Topics("edge", "dev1"), frames, lambda: window[0]), frames


def test_sample_source_subscribes_its_streams_and_numbers_windows_per_stream() -> None:
    window = [WindowSpec(length=2, stride=1, features=F)]
    source, frames = sample_source(window, streams=["wrist", "ankle"])
    assert source.filters() == ["edge/dev1/in/wrist", "edge/dev1/in/ankle"]
    source.handle(Sample("edge/dev1/in/wrist", b"[1, 2, 3, 4, 5, 6, 7, 8, 9]"))
    source.handle(Sample("edge/dev1/in/ankle", b"[1, 2, 3, 4, 5, 6]"))
    assert [(f.source, f.index) for f in frames] == [("wrist", 0), ("wrist", 1), ("ankle", 0)]
    assert frames[1].data.tolist() == [[4, 5, 6], [7, 8, 9]]


def test_sample_source_counts_rejected_samples_and_keeps_going() -> None:
    source, frames = sample_source([WindowSpec(length=1, stride=1, features=F)])
    source.handle(Sample("edge/dev1/in/a", b"[1, 2]"))
    source.handle(Sample("edge/dev1/in/a", b"[1, 2, 3]"))
    assert source.rejected == 1 and source.accepted == 1 and len(frames) == 1


def test_sample_source_follows_the_serving_models_window_and_keeps_its_counts() -> None:
    window = [WindowSpec(length=2, stride=2, features=F)]
    source, frames = sample_source(window, max_streams=1)
    source.handle(Sample("edge/dev1/in/a", b"[1, 2, 3]"))
    source.handle(Sample("edge/dev1/in/b", b"[1, 2, 3]"))  # evicts a
    assert source.evicted == 1 and frames == []
    window[0] = WindowSpec(length=1, stride=1, features=F)  # a model with another window
    source.handle(Sample("edge/dev1/in/b", b"[4, 5, 6]"))
    assert [f.data.shape for f in frames] == [(1, F)]  # b started afresh, at the new length
    source.handle(Sample("edge/dev1/in/c", b"[7, 8, 9]"))  # evicts b
    assert source.evicted == 2
