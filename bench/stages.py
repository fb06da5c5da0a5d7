"""Each stage of the agent alone, in a tight loop: decode, preprocess, invoke, post, payload."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import cv2
import numpy as np

from agent.inference.engine import Engine
from agent.inference.pipeline import build_loaded_model
from agent.manifest import load_manifest
from agent.payloads import labels_payload
from agent.records import Result
from bench.common import decoded_frames, timed_loop


def decode_fps(video: Path, seconds: float) -> float:
    """Frames/s of ``cv2.VideoCapture.read`` over the file, rewinding at the end."""
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    try:
        while time.perf_counter() < deadline:
            ok, _ = cap.read()
            if not ok:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            n += 1
    finally:
        cap.release()
    return n / (time.perf_counter() - t0)


def stage_rates(manifest_path: Path, video: Path, threads: int, seconds: float
                ) -> dict[str, float]:
    """Calls/s of preprocess, invoke, postprocess and payload, each alone, on real frames."""
    manifest = load_manifest(manifest_path)
    engine = Engine(manifest.model_path(manifest_path.parent), num_threads=threads)
    loaded = build_loaded_model(manifest, manifest_path.parent, engine, 3, 0.0)
    frames = decoded_frames(video, 32)
    cycle = itertools.cycle(frames)
    x = loaded.pre(frames[0]).copy()
    raw = engine.invoke(x)
    labels = loaded.post(raw)
    result = Result(1, "cam", 0, time.time(), time.monotonic(), labels, 0.1, 0.1,
                    manifest.name, manifest.version)
    out = {}
    for name, fn in (("preprocess", lambda: loaded.pre(next(cycle))),
                     ("invoke", lambda: engine.invoke(x)),
                     ("postprocess", lambda: loaded.post(raw)),
                     ("payload", lambda: labels_payload(result, "run"))):
        fn()
        n, dt = timed_loop(fn, seconds)
        out[name] = n / dt
    return out


def invoke_latencies(manifest_path: Path, threads: int, runs: int) -> np.ndarray:
    """Per-invoke latency in ms (for p99 comparisons)."""
    manifest = load_manifest(manifest_path)
    engine = Engine(manifest.model_path(manifest_path.parent), num_threads=threads)
    x = np.zeros(manifest.input.shape, np.dtype(manifest.input.dtype))
    return np.asarray(engine.time_invoke(x, runs=runs, warmup=20))
