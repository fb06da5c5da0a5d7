"""Per frame: the Keras model in TensorFlow (``predict`` and eager call) vs the agent's path.

Runs in one child process (TensorFlow and LiteRT live together there), rounds interleaved so
drift hits every method alike. The TensorFlow path is what a user would write: OpenCV
colour and resize, normalise in numpy, call Keras, argmax. The agent's path is its own
stages: ``FramePreprocessor`` -> ``Engine.invoke`` -> ``Postprocessor`` -> payload.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Method = Callable[[np.ndarray], Any]


def _tf_input(frame: np.ndarray, manifest: Any) -> np.ndarray:
    import cv2

    spec = manifest.input
    h, w = spec.shape[1], spec.shape[2]
    img = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if spec.color == "gray" else frame
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    if spec.color == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    mean = np.asarray(spec.normalization.mean, np.float32)
    std = np.asarray(spec.normalization.std, np.float32)
    x = (img.astype(np.float32) - mean) / std
    return x.reshape(1, h, w, -1)


def _methods(keras_path: str, manifest_path: str, threads: int) -> dict[str, Method]:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from agent.inference.engine import Engine
    from agent.inference.pipeline import build_loaded_model
    from agent.manifest import load_manifest
    from agent.payloads import labels_payload
    from agent.records import Result

    manifest = load_manifest(Path(manifest_path))
    model = keras.saving.load_model(keras_path, compile=False)
    engine = Engine(manifest.model_path(Path(manifest_path).parent), num_threads=threads)
    loaded = build_loaded_model(manifest, Path(manifest_path).parent, engine, 3, 0.0)

    def predict(frame: np.ndarray) -> Any:
        return int(np.argmax(model.predict(_tf_input(frame, manifest), verbose=0)))

    def call(frame: np.ndarray) -> Any:
        return int(np.argmax(model(_tf_input(frame, manifest), training=False).numpy()))

    def agent(frame: np.ndarray) -> Any:
        t0 = time.monotonic()
        labels = loaded.post(engine.invoke(loaded.pre(frame)))
        result = Result(1, "cam", 0, time.time(), t0, labels, 0.1, 0.1, "m", "1")
        return labels_payload(result, "run")

    return {"keras_predict": predict, "keras_call": call, "agent": agent}


def per_frame_ms(keras_path: str, manifest_path: str, video: str, threads: int,
                 rounds: int, budget_s: float) -> dict[str, list[float]]:
    """Runs in a child. Milliseconds per frame for each method, one value per round."""
    from bench.common import decoded_frames

    frames = decoded_frames(Path(video), 32)
    methods = _methods(keras_path, manifest_path, threads)
    for fn in methods.values():  # warm up (graph tracing, XNNPACK packing)
        for frame in frames[:3]:
            fn(frame)
    out: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            n, t0 = 0, time.perf_counter()
            while n < 3 or time.perf_counter() - t0 < budget_s:
                fn(frames[n % len(frames)])
                n += 1
            out[name].append(1000.0 * (time.perf_counter() - t0) / n)
    return out


def compare(keras_path: Path, manifest_path: Path, video: Path, threads: int, rounds: int,
            budget_s: float) -> dict[str, Any]:
    """Medians per method and the two ratios (Keras / agent), from a child process."""
    from bench.common import median
    from converter.worker import run_in_child

    raw = run_in_child(per_frame_ms, str(keras_path), str(manifest_path), str(video), threads,
                       rounds, budget_s)
    med = {name: median(values) for name, values in raw.items()}
    return {"ms": med, "runs": raw,
            "predict_over_agent": med["keras_predict"] / med["agent"],
            "call_over_agent": med["keras_call"] / med["agent"]}
