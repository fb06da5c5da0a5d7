"""A generated fleet's labels with a known truth: presence episodes, a planted drift, a model
change. Used by the tests (ground truth) and the benchmark (10 million rows, fast: numpy and
Arrow, never row by row). ``payloads`` turns rows into the agent's own labels messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from agent.contract import Topics
from agent.payloads import labels_payload
from agent.records import LabelScore, Result
from insights.schema import LABELS, SCHEMAS, TOPK_TYPE

CLASSES = tuple(str(i) for i in range(10))
BACKGROUND = "background"


@dataclass(frozen=True)
class Drift:
    """From ``from_ts`` on, ``device``'s top scores are ``drop`` lower."""

    device: str
    from_ts: float
    drop: float


@dataclass(frozen=True)
class ModelChange:
    """At ``at_ts`` ``device`` switches to ``version``, whose episodes score ``score_shift``
    differently."""

    device: str
    at_ts: float
    version: str = "2"
    score_shift: float = 0.0


@dataclass(frozen=True)
class Episode:
    device: str
    source: str
    label: str
    start_ts: float
    end_ts: float
    frames: int


@dataclass(frozen=True)
class FleetPlan:
    devices: int = 3
    seconds: float = 600.0
    rate_hz: float = 5.0
    start_ts: float = 1_780_000_000.0
    episode_s: tuple[float, float] = (3.0, 20.0)
    pause_s: tuple[float, float] = (8.0, 30.0)   # longer than any gap tolerance used with it
    score: float = 0.85
    score_sd: float = 0.04
    seed: int = 7
    drift: Drift | None = None
    changes: tuple[ModelChange, ...] = ()
    model_name: str = "digits_cnn"
    source: str = "cam"
    first_device: int = 0

    def device_ids(self) -> list[str]:
        return [f"cam-{i:03d}" for i in range(self.first_device,
                                              self.first_device + self.devices)]


@dataclass
class GeneratedLabels:
    table: pa.Table
    episodes: list[Episode] = field(default_factory=list)


def _timeline(plan: FleetPlan, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list]:
    """Per frame: the index of its episode's label in CLASSES, or -1 between episodes."""
    which = np.full(n, -1, dtype=np.int64)
    spans = []
    t, dt = 0.0, 1.0 / plan.rate_hz
    while True:
        t += rng.uniform(*plan.pause_s)
        length = rng.uniform(*plan.episode_s)
        i0, i1 = int(np.ceil(t / dt)), int(np.floor((t + length) / dt))
        if i1 >= n:
            break
        if i1 > i0:
            label = int(rng.integers(len(CLASSES)))
            which[i0:i1 + 1] = label
            spans.append((label, i0, i1))
        t += length
    return which, spans


def _device(plan: FleetPlan, device: str, rng: np.random.Generator) -> tuple[dict, list]:
    n = int(plan.seconds * plan.rate_hz)
    ts = plan.start_ts + np.arange(n) / plan.rate_hz
    which, spans = _timeline(plan, rng, n)
    inside = which >= 0
    score = np.where(inside, rng.normal(plan.score, plan.score_sd, n),
                     rng.uniform(0.2, 0.4, n))
    version = np.full(n, "1", dtype=object)
    for ch in plan.changes:
        if ch.device == device:
            after = ts >= ch.at_ts
            version[after] = ch.version
            score = np.where(after & inside, score + ch.score_shift, score)
    if plan.drift and plan.drift.device == device:
        score = np.where(ts >= plan.drift.from_ts, score - plan.drift.drop, score)
    score = np.clip(score, 0.0, 1.0)
    labels = np.array((*CLASSES, BACKGROUND), dtype=object)[np.where(inside, which, -1)]
    cols = {"device": np.full(n, device, dtype=object), "run_id": np.full(n, f"run-{device}",
                                                                         dtype=object),
            "seq": np.arange(n, dtype=np.int64), "ts": ts + 0.01, "frame_ts": ts,
            "source": np.full(n, plan.source, dtype=object),
            "frame_index": np.arange(n, dtype=np.int64),
            "model_name": np.full(n, plan.model_name, dtype=object), "model_version": version,
            "top_label": labels, "top_score": score, "label_index": np.where(inside, which, 10),
            "inference_ms": rng.gamma(4.0, 0.25, n), "preprocess_ms": rng.gamma(4.0, 0.1, n),
            "capture_to_publish_ms": rng.gamma(4.0, 1.0, n), "received_ts": ts + 0.05}
    truth = [Episode(device, plan.source, CLASSES[lab], float(ts[i0]), float(ts[i1]), i1 - i0 + 1)
             for lab, i0, i1 in spans]
    return cols, truth


def generate(plan: FleetPlan) -> GeneratedLabels:
    rng = np.random.default_rng(plan.seed)
    parts, episodes = [], []
    for device in plan.device_ids():
        cols, truth = _device(plan, device, rng)
        parts.append(cols)
        episodes += truth
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(merged["seq"])
    labels = pa.array(merged["top_label"], pa.string())
    index = pa.array(merged["label_index"], pa.int32())
    structs = pa.StructArray.from_arrays(
        [labels, index, pa.array(merged["top_score"], pa.float64())], fields=list(
            TOPK_TYPE.value_type))
    topk = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), structs)
    arrays = [topk if name == "topk" else pa.array(merged[name], SCHEMAS[LABELS].field(name).type)
              for name in SCHEMAS[LABELS].names]
    return GeneratedLabels(pa.Table.from_arrays(arrays, schema=SCHEMAS[LABELS]), episodes)


def payloads(table: pa.Table, prefix: str = "edge") -> Iterator[tuple[str, bytes]]:
    """The rows as the agent publishes them: (topic, labels message) built by the agent."""
    for r in table.to_pylist():
        top = r["topk"][0]
        result = Result(seq=r["seq"], source=r["source"], frame_index=r["frame_index"],
                        frame_ts=r["frame_ts"], frame_mono=0.0,
                        labels=(LabelScore(top["label"], top["index"], top["score"]),),
                        inference_ms=r["inference_ms"], preprocess_ms=r["preprocess_ms"],
                        model_name=r["model_name"], model_version=r["model_version"])
        yield (Topics(prefix, r["device"]).labels,
               labels_payload(result, r["run_id"], now=r["ts"], mono_now=0.0))
