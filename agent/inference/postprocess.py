"""Model output -> labels: dequantize with the tensor's own scale and zero point, softmax when
the manifest says logits, top-k, minimum score. Plus the optional publish-on-change filter."""

from __future__ import annotations

import time

import numpy as np

from agent.manifest import OutputSpec
from agent.records import LabelScore

SMALL_OUTPUT = 64
"""Outputs up to this many classes take the short top-k path."""


class Postprocessor:
    def __init__(self, spec: OutputSpec, labels: list[str], top_k: int = 3,
                 min_score: float = 0.0) -> None:
        self.spec = spec
        n = spec.shape[-1]
        self.labels = labels or [str(i) for i in range(n)]
        self.top_k = max(1, min(top_k, n))
        self.min_score = min_score
        q = spec.quantization
        self._scale = q.scale if q is not None and spec.dtype != "float32" else None
        self._zero = float(q.zero_point) if q is not None else 0.0
        self._logits = spec.kind == "logits"

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """Return float32 class scores for one output tensor (batch 1)."""
        x = raw.reshape(-1)
        if self._scale is not None:
            x = (x.astype(np.float32) - self._zero) * np.float32(self._scale)
        elif x.dtype != np.float32:
            x = x.astype(np.float32)
        if self._logits:
            x = x - x.max()
            np.exp(x, out=x)
            x /= x.sum()
        return x

    def __call__(self, raw: np.ndarray) -> tuple[LabelScore, ...]:
        if not self._logits and raw.size <= SMALL_OUTPUT:
            return self._top_k_small(raw.reshape(-1))
        s = self.scores(raw)
        k = self.top_k
        idx = np.argpartition(-s, k - 1)[:k] if k < s.size else np.arange(s.size)
        idx = idx[np.argsort(-s[idx], kind="stable")]
        return tuple(LabelScore(self.labels[i], int(i), round(float(s[i]), 6))
                     for i in idx if s[i] >= self.min_score)

    def _top_k_small(self, raw: np.ndarray) -> tuple[LabelScore, ...]:
        """Top-k of a short probability vector without whole-array numpy work.

        Dequantizing is monotonic (the scale is positive), so the order of the raw values
        is the order of the scores; only the k winners are dequantized, with the same
        float32 arithmetic as ``scores``. Ties keep index order.
        """
        values = raw.tolist()
        order = sorted(range(len(values)), key=values.__getitem__, reverse=True)[:self.top_k]
        picked = raw[order]
        if self._scale is not None:
            picked = (picked.astype(np.float32) - self._zero) * np.float32(self._scale)
        elif picked.dtype != np.float32:
            picked = picked.astype(np.float32)
        return tuple(LabelScore(self.labels[i], i, round(s, 6))
                     for i, s in zip(order, picked.tolist(), strict=True)
                     if s >= self.min_score)


class ChangeFilter:
    """Publish-on-change with hysteresis and a rate limit, per source.

    A result passes when its top label differs from the last published one and its score beats
    the last published label's current score by ``hysteresis``, or when the top label is the
    same but ``heartbeat_s`` passed; never more often than ``min_interval_s``.
    """

    def __init__(self, hysteresis: float = 0.05, min_interval_s: float = 0.0,
                 heartbeat_s: float = 60.0, on_change: bool = True) -> None:
        self.on_change = on_change
        self.hysteresis = hysteresis
        self.min_interval_s = min_interval_s
        self.heartbeat_s = heartbeat_s
        self._last: dict[str, tuple[str, float]] = {}
        self.suppressed = 0

    def passes(self, source: str, labels: tuple[LabelScore, ...],
               now: float | None = None) -> bool:
        """Whether to publish this result; the ones held back are counted in ``suppressed``."""
        if self._passes(source, labels, time.monotonic() if now is None else now):
            return True
        self.suppressed += 1
        return False

    def _passes(self, source: str, labels: tuple[LabelScore, ...], now: float) -> bool:
        top = labels[0].label if labels else ""
        score = labels[0].score if labels else 0.0
        last = self._last.get(source)
        if last is not None:
            last_label, last_t = last
            if now - last_t < self.min_interval_s:
                return False
            if not self.on_change:
                pass
            elif top == last_label and now - last_t < self.heartbeat_s:
                return False
            elif top != last_label:
                old = next((ls.score for ls in labels if ls.label == last_label), 0.0)
                if score - old < self.hysteresis:
                    return False
        self._last[source] = (top, now)
        return True
