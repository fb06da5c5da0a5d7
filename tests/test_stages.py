"""Preprocess, postprocess, inbox, pipeline swap/rollback, sd_notify, command routing."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.inbox import FrameInbox
from agent.commands.router import CommandRouter
from agent.contract import Topics
from agent.errors import FrameError, SampleError
from agent.health import HealthMonitor, SystemdNotifier
from agent.inference.pipeline import Pipeline, build_loaded_model
from agent.inference.postprocess import ChangeFilter, Postprocessor
from agent.inference.preprocess import FramePreprocessor, WindowPreprocessor
from agent.manifest import (
    InputSpec,
    ModelManifest,
    Normalization,
    OutputSpec,
    Quantization,
    WindowSpec,
)
from agent.records import Frame, LabelScore, Result


def spec(**kw: object) -> InputSpec:
    base = {"shape": [1, 28, 28, 1], "dtype": "float32", "color": "gray", "resize": "stretch",
            "normalization": Normalization(mean=[0.0], std=[255.0])}
    base.update(kw)
    return InputSpec(**base)


# -- preprocess ---------------------------------------------------------------------------


def test_float_gray_matches_reference_arithmetic() -> None:
    img = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    out = FramePreprocessor(spec())(img)
    ref = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (28, 28),
                     interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    assert out.shape == (1, 28, 28, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, :, 0], ref, atol=1.01 / 255)  # rounding order


def test_int8_quantization_uses_scale_and_zero_point() -> None:
    q = Quantization(scale=1 / 255, zero_point=-128)
    img = np.full((28, 28, 3), 255, np.uint8)
    img[:14] = 0
    out = FramePreprocessor(spec(dtype="int8", quantization=q))(img)
    assert out.dtype == np.int8
    assert out[0, 0, 0, 0] == -128 and out[0, 27, 0, 0] == 127


def test_rgb_order_and_per_channel_normalisation() -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    img[..., 0] = 10  # blue
    img[..., 2] = 200  # red
    s = spec(shape=[1, 4, 4, 3], color="rgb",
             normalization=Normalization(mean=[100.0, 0.0, 0.0], std=[2.0, 1.0, 1.0]))
    out = FramePreprocessor(s)(img)
    assert out[0, 0, 0].tolist() == [50.0, 0.0, 10.0]


def test_letterbox_pads_and_centre_crop_crops() -> None:
    img = np.full((50, 100, 3), 255, np.uint8)
    lb = FramePreprocessor(spec(resize="letterbox", shape=[1, 20, 20, 1]))(img)[0, :, :, 0]
    assert lb[0, 10] == 0.0 and lb[10, 10] == pytest.approx(1.0)
    img[:, :25] = 0
    cc = FramePreprocessor(spec(resize="center_crop", shape=[1, 20, 20, 1]))(img)[0, :, :, 0]
    assert cc.min() == pytest.approx(1.0)


def test_bad_frames_are_named() -> None:
    pre = FramePreprocessor(spec())
    with pytest.raises(FrameError, match="non-empty uint8"):
        pre(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(FrameError, match="non-empty uint8"):
        pre(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(FrameError, match="is not HxW"):
        pre(np.zeros((4, 4, 5), np.uint8))


def test_window_preprocess_normalises_and_quantizes() -> None:
    w = WindowSpec(length=3, stride=3, features=2)
    s = InputSpec(shape=[1, 3, 2], dtype="int8", layout="NTF",
                  normalization=Normalization(mean=[1.0], std=[2.0]),
                  quantization=Quantization(scale=0.5, zero_point=0))
    out = WindowPreprocessor(s, w)(np.full((3, 2), 3.0, np.float32))
    assert out.dtype == np.int8 and (out == 2).all()
    with pytest.raises(SampleError, match="window shape"):
        WindowPreprocessor(s, w)(np.zeros((2, 2), np.float32))


# -- postprocess --------------------------------------------------------------------------


def test_dequantize_softmax_topk_min_score() -> None:
    out = OutputSpec(shape=[1, 4], dtype="int8", kind="logits",
                     quantization=Quantization(scale=0.5, zero_point=-10))
    post = Postprocessor(out, ["a", "b", "c", "d"], top_k=2, min_score=0.05)
    labels = post(np.array([[-10, -6, -2, -10]], np.int8))  # logits 0, 2, 4, 0
    assert [ls.label for ls in labels] == ["c", "b"]
    assert sum(post.scores(np.array([[-10, -6, -2, -10]], np.int8))) == pytest.approx(1.0)
    post.min_score = 0.5
    assert [ls.label for ls in post(np.array([[-10, -6, -2, -10]], np.int8))] == ["c"]


def test_change_filter_hysteresis_and_rate() -> None:
    f = ChangeFilter(hysteresis=0.2, min_interval_s=1.0, heartbeat_s=100)
    a = (LabelScore("cat", 0, 0.9), LabelScore("dog", 1, 0.1))
    b_close = (LabelScore("dog", 1, 0.55), LabelScore("cat", 0, 0.45))
    b_clear = (LabelScore("dog", 1, 0.8), LabelScore("cat", 0, 0.2))
    assert f.passes("s", a, now=0.0)
    assert not f.passes("s", b_clear, now=0.5)  # rate limit
    assert not f.passes("s", a, now=2.0)  # unchanged
    assert not f.passes("s", b_close, now=3.0)  # within hysteresis
    assert f.passes("s", b_clear, now=4.0)
    assert f.suppressed == 3


# -- inbox and pipeline -------------------------------------------------------------------


def frame(source: str, index: int, data: np.ndarray | None = None,
          age_s: float = 0.0) -> Frame:
    data = data if data is not None else np.zeros((28, 28, 3), np.uint8)
    return Frame(source, index, time.time() - age_s, time.monotonic() - age_s, data)


def test_inbox_keeps_newest_and_counts_overwrites() -> None:
    inbox = FrameInbox()
    inbox.register("cam", depth=1)
    inbox.register("seq", depth=3)
    for i in range(5):
        inbox.put(frame("cam", i))
    for i in range(2):
        inbox.put(frame("seq", i))
    got = [inbox.take(0.01) for _ in range(4)]
    assert [(f.source, f.index) for f in got if f] == [("cam", 4), ("seq", 0), ("seq", 1)]
    assert inbox.overwritten == 4 and got[-1] is None


class ScriptedBackend:
    """A stand-in interpreter: returns one-hot on a fixed class, or fails on demand."""

    def __init__(self, klass: int, fail: bool = False, block: threading.Event | None = None):
        self.klass, self.fail, self.block, self.calls = klass, fail, block, 0

    def invoke(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.block is not None:
            self.block.wait()
        if self.fail:
            return np.full((1, 10), np.nan, np.float32)
        out = np.zeros((1, 10), np.float32)
        out[0, self.klass] = 1.0
        return out

    def reset_state(self) -> None:
        pass


def manifest(version: str = "1") -> ModelManifest:
    return ModelManifest(name="m", version=version, file="m.tflite", sha256="0" * 64,
                         size_bytes=1, task="frame", quantize="float32", input=spec(),
                         output=OutputSpec(shape=[1, 10], dtype="float32"),
                         labels=[str(i) for i in range(10)])


def run_pipeline(pipeline: Pipeline, inbox: FrameInbox, frames: int,
                 results: list[Result]) -> None:
    start = len(results) + pipeline.counters.inference_errors
    for i in range(frames):
        inbox.put(frame("cam", i))
        deadline = time.monotonic() + 5
        while len(results) + pipeline.counters.inference_errors <= start + i:
            assert time.monotonic() < deadline, "pipeline made no progress"
            time.sleep(0.001)


def test_swap_between_frames_and_automatic_rollback() -> None:
    inbox = FrameInbox()
    results: list[Result] = []
    rollbacks: list[str] = []
    good = build_loaded_model(manifest("1"), Path("."), ScriptedBackend(3), 1, 0.0)
    pipeline = Pipeline(good, inbox, results.append, rollback_after_failures=2,
                        probation_frames=5, on_rollback=lambda b, g, r: rollbacks.append(r))
    pipeline.start()
    try:
        run_pipeline(pipeline, inbox, 3, results)
        newer = build_loaded_model(manifest("2"), Path("."), ScriptedBackend(7), 1, 0.0)
        assert pipeline.swap(newer)
        run_pipeline(pipeline, inbox, 3, results)
        assert [r.labels[0].label for r in results] == ["3"] * 3 + ["7"] * 3
        assert [r.seq for r in results] == list(range(1, 7))
        broken = build_loaded_model(manifest("3"), Path("."), ScriptedBackend(0, fail=True),
                                    1, 0.0)
        assert pipeline.swap(broken)
        n = len(results)
        run_pipeline(pipeline, inbox, 2, results)  # two failures: rolled back
        assert pipeline.model.manifest.version == "2" and rollbacks
        assert "NaN" in rollbacks[0]
        run_pipeline(pipeline, inbox, 1, results)
        assert results[-1].model_version == "2" and len(results) == n + 1
    finally:
        pipeline.stop()


def test_stale_frames_are_dropped_not_inferred() -> None:
    inbox = FrameInbox()
    results: list[Result] = []
    backend = ScriptedBackend(1)
    pipeline = Pipeline(build_loaded_model(manifest(), Path("."), backend, 1, 0.0), inbox,
                        results.append, max_frame_age_ms=100)
    pipeline._process(frame("cam", 0, age_s=1.0))
    pipeline._process(frame("cam", 1))
    assert pipeline.counters.dropped_stale == 1 and backend.calls == 1
    assert results[0].frame_index == 1


# -- health -------------------------------------------------------------------------------


def notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(3)
    return sock


def test_watchdog_pings_only_while_progress(tmp_path: Path) -> None:
    sock = notify_socket(tmp_path)
    progress = threading.Event()
    progress.set()
    monitor = HealthMonitor(SystemdNotifier(str(tmp_path / "notify")), progress.is_set,
                            lambda: "ok", lambda: None, stats_interval_s=100,
                            watchdog_s=0.05)
    monitor.start()
    try:
        assert b"WATCHDOG=1" in sock.recv(1024)
        progress.clear()
        deadline = time.monotonic() + 3
        while b"STATUS=stalled" not in sock.recv(1024):  # pings sent before the stall drain
            assert time.monotonic() < deadline
        msgs = [sock.recv(1024) for _ in range(3)]
        assert all(b"WATCHDOG=1" not in m for m in msgs), msgs
    finally:
        monitor.stop()
        sock.close()


# -- commands -----------------------------------------------------------------------------


class FakeInbound:
    def __init__(self, topic: str, payload: bytes, response_topic: str | None = None,
                 correlation_data: bytes | None = None, retain: bool = False) -> None:
        self.topic, self.payload = topic, payload
        self.response_topic, self.correlation_data = response_topic, correlation_data
        self.retain = retain


def test_router_replies_and_never_raises() -> None:
    topics = Topics("edge", "dev1")
    sent: list[tuple[str, dict, bytes | None]] = []

    def boom(args: dict) -> None:
        raise RuntimeError("kaput")

    router = CommandRouter(topics, {"ping": lambda a: {"pong": True}, "boom": boom},
                           lambda t, p, c: sent.append((t, json.loads(p), c)),
                           response_topic_filters=["reply/#"])
    router.handle(FakeInbound("edge/dev1/cmd/ping", b'{"id": 1}'))
    router.handle(FakeInbound("edge/dev1/cmd/ping", b'{"id": 2}', "reply/here", b"corr"))
    router.handle(FakeInbound("edge/dev1/cmd/nope", b'{"id": 3}'))
    router.handle(FakeInbound("edge/dev1/cmd/ping", b'{"id": 4'))  # id readable: a reply
    router.handle(FakeInbound("edge/dev1/cmd/ping", b'[1, 2]'))
    router.handle(FakeInbound("edge/dev1/cmd/boom", b'{"id": "b"}'))
    assert sent[0] == ("edge/dev1/cmd/ping/result",
                       {"id": 1, "device": "dev1", "ok": True, "result": {"pong": True}}, None)
    assert sent[2][0] == "reply/here" and sent[2][2] == b"corr"
    assert "unknown command 'nope'" in sent[3][1]["error"]
    assert sent[4][1]["id"] == 4 and "not JSON" in sent[4][1]["error"]
    assert len(sent) == 6  # [1, 2] carries no readable id: logged only
    router.handle(FakeInbound("edge/dev1/cmd/ping", b'{"x": {"id": 9}, "y": [{"id": 8}]'))
    router.handle(FakeInbound("edge/dev1/cmd/ping", b'{"id": [1]}'))
    router.handle(FakeInbound("edge/dev1/cmd/ping", b'{"id": 7}', retain=True))
    assert len(sent) == 6 and router.ignored == 1
    router.handle(FakeInbound("edge/dev1/cmd/ping", b'\xff\xfe', "reply/here", b"c2"))
    assert "not UTF-8" in sent[-1][1]["error"] and sent[-1][2] == b"c2"
    assert sent[5][1]["error"] == "internal error: RuntimeError: kaput"
    assert router.rejected == 7


def test_router_sends_replies_only_under_allowed_response_topics() -> None:
    sent: list[str] = []
    router = CommandRouter(Topics("edge", "dev1"), {"ping": lambda a: {"pong": True}},
                           lambda t, p, c: sent.append(t))
    for response in ("edge/dev2/cmd/pause", "edge/dev1/cmd/pause", "edge/dev1/cmd/ping/result",
                     "edge/dev1/cmd/ping/result/me", "edge/dev1/cmd/+/result", "x/#"):
        router.handle(FakeInbound("edge/dev1/cmd/ping", b"{}", response, b"c"))
    assert sent == ["edge/dev1/cmd/ping/result", "edge/dev1/cmd/ping/result/me"]


def test_peek_id_reads_only_the_top_level_id() -> None:
    from agent.commands.router import peek_id

    assert peek_id(b'{"a": "}{\\"id\\": 3", "id": "x"' + b"[" * 50_000) == "x"
    assert peek_id(b'{"a": {"id": 1}}') is None
    assert peek_id(b'{"id": {"nested": 1}}') is None
    assert peek_id(b'{"id": true}') is None
    assert peek_id(b'["id", 1]') is None
    assert peek_id(b'{"id"  :  12, \xff') == 12
    assert peek_id(b"") is None


def test_wait_taken_lets_a_file_source_wait_for_inference() -> None:
    inbox = FrameInbox()
    inbox.register("file", depth=1)
    assert inbox.wait_taken("file", 0.01)  # nothing waiting
    inbox.put(frame("file", 0))
    assert not inbox.wait_taken("file", 0.01)
    taker = threading.Timer(0.05, lambda: inbox.take(1.0))
    taker.start()
    assert inbox.wait_taken("file", 5.0)
    inbox.put(frame("file", 1))
    inbox.close()
    assert inbox.wait_taken("file", 5.0)  # closed: nobody waits forever


def test_hold_queues_frames_and_ends_by_itself() -> None:
    inbox = FrameInbox()
    inbox.register("cam", depth=1)
    inbox.hold(4, for_s=60)
    for i in range(3):
        inbox.put(frame("cam", i))
    assert [inbox.take(0.01).index for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
    assert inbox.overwritten == 0
    inbox.hold(4, for_s=0.0)  # a push that never reports back
    inbox.put(frame("cam", 3))
    assert inbox.take(0.01) is not None  # the expired hold ends here
    for i in range(4, 7):
        inbox.put(frame("cam", i))
    assert inbox.take(0.01).index == 6 and inbox.overwritten == 2  # type: ignore[union-attr]


def test_no_frame_is_lost_or_reordered_across_a_model_swap() -> None:
    inbox = FrameInbox()
    inbox.register("cam", depth=64)
    results: list[Result] = []
    done = threading.Event()

    def publish(r: Result) -> None:
        results.append(r)
        if len(results) == 60:
            done.set()

    old = build_loaded_model(manifest("1"), Path("."), ScriptedBackend(3), 1, 0.0)
    pipeline = Pipeline(old, inbox, publish)
    pipeline.start()
    try:
        for i in range(30):
            inbox.put(frame("cam", i))
        assert pipeline.swap(build_loaded_model(manifest("2"), Path("."), ScriptedBackend(7),
                                                1, 0.0))
        for i in range(30, 60):
            inbox.put(frame("cam", i))
        assert done.wait(10), f"{len(results)} of 60 frames published"
    finally:
        pipeline.stop()
    assert [r.frame_index for r in results] == list(range(60))
    versions = [r.model_version for r in results]
    assert versions[-1] == "2" and versions == sorted(versions)  # old ones, then new ones
    assert all(r.labels[0].label == {"1": "3", "2": "7"}[r.model_version] for r in results)


def test_preprocess_of_the_next_frame_overlaps_the_invoke() -> None:
    inbox = FrameInbox()
    inbox.register("cam", depth=8)
    gate = threading.Event()
    backend = ScriptedBackend(1, block=gate)
    results: list[Result] = []
    pipeline = Pipeline(build_loaded_model(manifest(), Path("."), backend, 1, 0.0), inbox,
                        results.append)
    pipeline.start()
    try:
        for i in range(3):
            inbox.put(frame("cam", i))
        deadline = time.monotonic() + 5
        while not (backend.calls == 1 and pipeline._handoff.full):
            assert time.monotonic() < deadline, "frame 1 was not prepared during invoke 0"
            time.sleep(0.001)
        while inbox.pending():  # frame 2 is taken and prepared too, waiting for the place
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert backend.calls == 1 and inbox.overwritten == 0
        gate.set()
        while len(results) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    finally:
        gate.set()
        pipeline.stop()
    assert [r.frame_index for r in results] == [0, 1, 2]
