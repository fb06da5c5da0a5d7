"""Quantization table: invoke latency p50 at 1 and 2 threads, size and accuracy per mode."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from agent.inference.engine import Engine
from agent.manifest import load_manifest
from bench.common import median
from bench.models import Variant


def _input(manifest_input: Any) -> np.ndarray:
    dtype = np.dtype(manifest_input.dtype)
    rng = np.random.default_rng(0)
    if dtype.kind == "f":
        return rng.normal(0.0, 1.0, manifest_input.shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, manifest_input.shape, dtype=dtype)


def invoke_p50_ms(variant: Variant, threads: int, budget_s: float) -> float:
    manifest = load_manifest(variant.manifest)
    engine = Engine(variant.tflite, num_threads=threads)
    x = _input(manifest.input)
    t0 = time.perf_counter()
    engine.invoke(x)
    first = time.perf_counter() - t0
    runs = int(min(500, max(5, budget_s / max(first, 1e-5))))
    return float(np.percentile(engine.time_invoke(x, runs=runs, warmup=min(20, runs)), 50))


def table(families: dict[str, list[Variant]], rounds: int, budget_s: float
          ) -> list[dict[str, Any]]:
    """One row per variant; latencies are medians over interleaved rounds."""
    samples: dict[tuple[str, int], list[float]] = {}
    variants = [v for vs in families.values() for v in vs]
    for _ in range(rounds):
        for v in variants:
            for threads in (1, 2):
                samples.setdefault((v.key, threads), []).append(
                    invoke_p50_ms(v, threads, budget_s))
    rows = []
    for v in variants:
        p1, p2 = median(samples[(v.key, 1)]), median(samples[(v.key, 2)])
        rows.append({"family": v.family, "mode": v.mode, "size_kb": v.size_bytes / 1024,
                     "p50_1t_ms": p1, "p50_2t_ms": p2, "accuracy": v.accuracy,
                     "agreement": v.agreement, "keras_accuracy": v.keras_accuracy,
                     "task": v.task, "manifest": str(v.manifest)})
    return rows


def fastest(rows: list[dict[str, Any]], family: str, threads: int = 2) -> dict[str, Any]:
    key = "p50_2t_ms" if threads == 2 else "p50_1t_ms"
    return min((r for r in rows if r["family"] == family), key=lambda r: r[key])
