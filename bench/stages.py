"""Each stage of the agent alone, in a tight loop: wall rate and CPU time per call.

decode (FFmpeg's full decode, and the agent's own path for this model: raw MJPEG packets
decoded reduced by ``agent/capture/jpeg.py``), preprocess (on the frames the agent decodes),
invoke at the agent's thread count, postprocess + payload, and publish (QoS 1 through the
agent's MQTT port with the outbox on, to the real broker, a subscriber confirming each: the
CPU of this process and of the broker per label). CPU time is the process's (all threads,
so XNNPACK's workers count), which is what the CPU bound adds up.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.capture.jpeg import JpegPackets
from agent.inference.engine import Engine
from agent.inference.pipeline import build_loaded_model
from agent.inference.preprocess import FramePreprocessor
from agent.manifest import load_manifest
from agent.payloads import labels_payload
from agent.records import Result
from bench.common import _cpu_seconds


def _cost(fn: Callable[[], Any], seconds: float, min_calls: int = 5) -> tuple[float, float]:
    """(calls/s wall, CPU ms per call) of ``fn`` in a tight loop."""
    fn()
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + seconds
    while n < min_calls or time.perf_counter() < deadline:
        fn()
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / wall, cpu * 1000.0 / n


class _Reader:
    """Reads a file over and over, as the agent's capture thread does for this model."""

    def __init__(self, video: Path, plan: Any = None) -> None:
        self.video, self.plan = video, plan
        self._open()

    def _open(self) -> None:
        self.cap = cv2.VideoCapture(str(self.video), cv2.CAP_FFMPEG)
        self.packets = JpegPackets.open(self.cap, self.plan) if self.plan else None

    def __call__(self) -> np.ndarray:
        ok, img = self.cap.read()
        if not ok:
            self.cap.release()
            self._open()
            ok, img = self.cap.read()
        if self.packets is not None:
            img = self.packets.decode(img)
        assert img is not None
        return img


def decode_fps(video: Path, seconds: float, plan: Any = None) -> float:
    """Frames/s of the decode alone (FFmpeg's BGR decode, or reduced as ``plan`` says)."""
    return decode_cost(video, seconds, plan)[0]


def decode_cost(video: Path, seconds: float, plan: Any = None) -> tuple[float, float]:
    reader = _Reader(video, plan)
    try:
        return _cost(reader, seconds)
    finally:
        reader.cap.release()


def agent_frames(video: Path, plan: Any, count: int = 32) -> list[np.ndarray]:
    reader = _Reader(video, plan)
    try:
        return [reader().copy() for _ in range(count)]
    finally:
        reader.cap.release()


def stage_costs(manifest_path: Path, video: Path, threads: int, seconds: float
                ) -> dict[str, tuple[float, float]]:
    """Stage -> (calls/s, CPU ms per call): decode (FFmpeg full), decode (the agent's),
    preprocess, invoke, post (postprocess + payload)."""
    manifest = load_manifest(manifest_path)
    engine = Engine(manifest.model_path(manifest_path.parent), num_threads=threads)
    loaded = build_loaded_model(manifest, manifest_path.parent, engine, 3, 0.0)
    plan = loaded.pre.decode_plan if isinstance(loaded.pre, FramePreprocessor) else None
    frames = agent_frames(video, plan)
    cycle = itertools.cycle(frames)
    x = loaded.pre(frames[0]).copy()
    raw = engine.invoke(x)
    labels = loaded.post(raw)
    result = Result(1, "cam", 0, time.time(), time.monotonic(), labels, 0.1, 0.1,
                    manifest.name, manifest.version)
    out = {"decode_ffmpeg": decode_cost(video, seconds),
           "decode": decode_cost(video, seconds, plan)}
    out["preprocess"] = _cost(lambda: loaded.pre(next(cycle)), seconds)
    out["invoke"] = _cost(lambda: engine.invoke(x), seconds)
    out["post"] = _cost(lambda: labels_payload(result, "run", time.time(), time.monotonic())
                        if loaded.post(raw) else None, seconds)
    return out


def publish_cost(broker: Any, count: int = 3000) -> tuple[float, float]:
    """(labels/s, CPU ms per label of this process + the broker) through the agent's port."""
    import tempfile

    from agent.mqtt.outbox import Outbox
    from bench.publish_rate import run_once

    with tempfile.TemporaryDirectory(prefix="bench-pubcost-") as tmp:
        box = Outbox(Path(tmp) / "o.db")
        try:
            c0 = time.process_time() + _cpu_seconds(broker.proc.pid)
            rate = run_once(broker, box, count, "5")
            cpu = time.process_time() + _cpu_seconds(broker.proc.pid) - c0
        finally:
            box.close()
    return rate, cpu * 1000.0 / count


def invoke_latencies(manifest_path: Path, threads: int, runs: int) -> np.ndarray:
    """Per-invoke latency in ms (for p99 comparisons)."""
    manifest = load_manifest(manifest_path)
    engine = Engine(manifest.model_path(manifest_path.parent), num_threads=threads)
    x = np.zeros(manifest.input.shape, np.dtype(manifest.input.dtype))
    return np.asarray(engine.time_invoke(x, runs=runs, warmup=20))
