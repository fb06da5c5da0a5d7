"""One candidate converted in a child, refused if it holds loops or Flex ops, else measured.

Parent side: TensorFlow runs only in the child (``converter.worker``); the measuring
goes through the agent's own interpreter wrapper (``converter.report.measure``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.errors import ConversionError
from converter import worker
from converter.graph import ConvertSpec
from converter.options import ConvertOptions, forbidden_ops, refusal
from converter.report import ModeResult, measure, set_drops


@dataclass(frozen=True)
class Yardstick:
    """What every candidate is measured against, and the data its calibration uses."""

    opts: ConvertOptions
    rnn: bool
    calibration: np.ndarray | None  # normalised, the subset used
    x_eval: np.ndarray  # normalised
    y_eval: np.ndarray | None
    reference: np.ndarray  # the Keras model's outputs on x_eval
    keras_accuracy: float | None


def spec_label(spec: ConvertSpec, rnn: bool) -> str:
    return f"mode {spec.mode}" + (f", lstm path {spec.lstm_path}" if rnn else "")


def convert_candidates(stick: Yardstick, specs: list[ConvertSpec]) -> list[ModeResult]:
    """Each candidate in turn; once a graph is refused for its loops or Flex ops, the other
    modes of that LSTM path are skipped (quantizing a graph does not remove its loops)."""
    results: list[ModeResult] = []
    looped: set[str] = set()
    for spec in specs:
        if spec.lstm_path in looped:
            continue
        result = convert_one(stick, spec)
        if result.forbidden and not stick.opts.allow_flex:
            looped.add(spec.lstm_path)
        results.append(result)
    return results


def convert_one(stick: Yardstick, spec: ConvertSpec, method: str | None = None) -> ModeResult:
    """Convert ``spec`` with the TensorFlow converter in a child, then measure it."""
    return measured(stick, spec, method, worker.convert_mode, spec, stick.calibration)


def measured(stick: Yardstick, spec: ConvertSpec, method: str | None,
             child_fn: Callable[..., tuple[bytes, dict[str, int], dict[str, list[str]]]],
             *args: Any) -> ModeResult:
    """Run ``child_fn(*args)`` in a child for (content, ops, sites); refuse or measure it."""
    result = ModeResult(spec.mode, spec.lstm_path if stick.rnn else None, method=method)
    try:
        content, ops, sites = worker.run_in_child(child_fn, *args)
    except ConversionError as exc:
        result.error = str(exc)
        return result
    result.ops, result.forbidden, result.forbidden_sites = ops, forbidden_ops(ops), sites
    refused = None if stick.opts.allow_flex else refusal(ops, sites, spec_label(spec, stick.rnn))
    if refused:
        result.error = refused
        return result
    try:
        measure(result, content, stick.x_eval, stick.y_eval, stick.reference,
                stick.opts.threads, reset_state=stick.rnn and spec.lstm_path == "fused",
                runs=stick.opts.latency_runs)
    except Exception as exc:  # the interpreter refused it: a failed candidate, not a crash
        result.error = f"the interpreter cannot run it: {type(exc).__name__}: {exc}"
        return result
    result.content = content
    set_drops([result], stick.keras_accuracy)
    return result
