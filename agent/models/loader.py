"""The one path that builds, checks and warms a model, whoever asks: start-up, a push (after
its trial in a child process, ``agent/models/trial.py``) and a rollback.

Build the engine with the configured runtime, delegate and threads; check its tensors against
the manifest; run it on a zero input (untimed warm-up, then timed runs); refuse an output that
is not finite. Any failure is a ``ModelLoadError`` (or another ``EdgeError``) naming the cause.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ModelLoadError
from agent.inference.engine import DelegateSpec, Engine
from agent.inference.pipeline import InferenceBackend
from agent.manifest import ModelManifest

EngineFactory = Callable[[Path, ModelManifest], InferenceBackend]
WARMUP_RUNS, TIMED_RUNS = 2, 5


@dataclass(frozen=True)
class EngineSettings:
    """What the config says about building an engine (``model.runtime``, ``delegate``,
    ``num_threads``); the same for every model this agent loads."""

    runtime: str = "auto"
    delegate: DelegateSpec = field(default_factory=DelegateSpec)
    num_threads: int = 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for the trial child (``from_dict`` reads it back)."""
        return {"runtime": self.runtime, "num_threads": self.num_threads,
                "delegate": asdict(self.delegate)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EngineSettings:
        return cls(raw["runtime"], DelegateSpec(**raw["delegate"]), int(raw["num_threads"]))


@dataclass(frozen=True)
class WarmEngine:
    """A built, checked and warmed engine with what it cost."""

    engine: InferenceBackend
    load_ms: float
    invoke_ms: float

    def timings(self) -> dict[str, float]:
        return {"load_ms": round(self.load_ms, 2), "invoke_ms": round(self.invoke_ms, 3)}


class ModelLoader:
    """Builds engines the one way; ``engine_factory`` replaces the real interpreter in tests."""

    def __init__(self, settings: EngineSettings,
                 engine_factory: EngineFactory | None = None) -> None:
        self.settings = settings
        self._factory = engine_factory or self.build_engine

    def build_engine(self, model_path: Path, manifest: ModelManifest) -> Engine:
        s = self.settings
        engine = Engine(model_path, num_threads=s.num_threads, runtime=s.runtime,
                        delegate=s.delegate)
        engine.check_manifest(manifest)
        return engine

    def load(self, model_path: Path, manifest: ModelManifest) -> WarmEngine:
        t0 = time.perf_counter()
        engine = self._factory(model_path, manifest)
        load_ms = (time.perf_counter() - t0) * 1000.0
        return WarmEngine(engine, load_ms, warm_up(engine, manifest))


def warm_up(engine: InferenceBackend, manifest: ModelManifest) -> float:
    """Run the engine on a zero input; return the median invoke time in ms. A non-finite
    output is a ModelLoadError."""
    shape = getattr(engine, "input_shape", None) or tuple(manifest.input.shape)
    x = np.zeros(shape, dtype=np.dtype(manifest.input.dtype))
    for _ in range(WARMUP_RUNS):
        engine.invoke(x)
    times = []
    out = None
    for _ in range(TIMED_RUNS):
        t0 = time.perf_counter()
        out = engine.invoke(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    out = np.asarray(out)
    if np.issubdtype(out.dtype, np.floating) and not np.all(np.isfinite(out)):
        raise ModelLoadError("the model's output on a zero input is not finite (NaN or inf)")
    return float(np.median(times))
