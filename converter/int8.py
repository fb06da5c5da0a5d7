"""When int8 loses more than its budget: find the layers that lose it, keep them in float.

The quantization debugger (``converter.quantize.worst_layers``) ranks every quantized
tensor by its RMSE relative to its scale. ``mixed`` candidates then keep the worst 1, 2,
4, ... of them in float (``denylisted_nodes``), each one measured, until one is within
``--int8-budget`` points of Keras or the limit is reached. Parent side.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.errors import ConversionError
from converter import worker
from converter.graph import ConvertSpec
from converter.measured import Yardstick, convert_one
from converter.report import ModeResult
from converter.selection import needs_mixed

log = logging.getLogger(__name__)
LAYER_ROWS = 12  # tensors the analysis ranks (and the report lists the first 5 of)
FALLBACK_STEPS = (1, 2, 4, 8)  # tensors kept in float, tried in turn


def within_budget(result: ModeResult, budget: float) -> bool:
    return not result.error and result.drop_points is not None and result.drop_points <= budget


def float_fallback(stick: Yardstick, results: list[ModeResult]) -> list[ModeResult]:
    """``mixed`` candidates with more and more of the worst tensors in float, until one is
    within the int8 budget."""
    opts = stick.opts
    int8 = needs_mixed(results, opts)
    if int8 is None or stick.calibration is None:
        return []
    spec = ConvertSpec(str(opts.model), "int8", int8.lstm_path or "unrolled",
                       allow_flex=opts.allow_flex)
    try:
        rows: list[dict[str, Any]] = worker.run_in_child(
            worker.layer_errors, spec, stick.calibration, LAYER_ROWS)
    except ConversionError as exc:
        log.warning("per-layer int8 error analysis failed: %s", exc)
        return []
    int8.layer_errors = rows[:5]
    steps = [n for n in FALLBACK_STEPS if n <= len(rows)] or [len(rows)]
    tried: list[ModeResult] = []
    for n in steps:
        names = tuple(r["tensor"] for r in rows[:n])
        mixed_spec = ConvertSpec(str(opts.model), "mixed", spec.lstm_path,
                                 allow_flex=opts.allow_flex, float_layers=names)
        mixed = convert_one(stick, mixed_spec, method=f"{n} float")
        tried.append(mixed)
        if within_budget(mixed, opts.int8_budget):
            break
    return tried
