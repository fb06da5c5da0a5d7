"""Where int8 loses accuracy, and the ``mixed`` mode that keeps those layers in float.

Both use ``tf.lite.experimental.QuantizationDebugger``: it runs the float and the
quantized graph side by side and measures every quantized tensor's error; its
``denylisted_nodes`` option then quantizes everything but the named tensors.
Runs inside a child process.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

from agent.errors import ConversionError
from converter.graph import ConvertSpec, representative
from converter.source import make_converter

DEBUG_SAMPLES = 64


def _debug_dataset(calibration: np.ndarray) -> Any:
    return representative(calibration[:DEBUG_SAMPLES])


def _prepare(converter: Any, calibration: np.ndarray | None) -> None:
    import tensorflow as tf

    if calibration is None or len(calibration) == 0:
        raise ConversionError("mode mixed needs calibration data (--calibration)")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative(calibration)


def worst_layers(spec: ConvertSpec, calibration: np.ndarray, top: int) -> list[dict[str, Any]]:
    """The ``top`` quantized tensors with the largest RMSE relative to their scale."""
    import tensorflow as tf

    converter = make_converter(spec)
    _prepare(converter, calibration)
    try:
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=_debug_dataset(calibration))
        debugger.run()
    except Exception as exc:
        raise ConversionError(f"the quantization debugger failed: {type(exc).__name__}: "
                              f"{exc}") from exc
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(row.get("scale") or 0.0)
        if scale <= 0:
            continue
        tensor = row["tensor_name"]
        rows.append({"layer": layer_name(tensor), "op": row["op_name"], "tensor": tensor,
                     "rmse_over_scale": round(float(np.sqrt(float(row["mean_squared_error"])))
                                              / scale, 4),
                     "max_abs_error": round(float(row["max_abs_error"]), 6)})
    rows.sort(key=lambda r: -r["rmse_over_scale"])
    return rows[:top]


def layer_name(tensor: str) -> str:
    """The Keras layer a TFLite tensor name comes from (``model/layer/op;...`` -> layer)."""
    parts = tensor.split(";")[0].split("/")
    return parts[1] if len(parts) > 2 else parts[0]


def convert_mixed(converter: Any, calibration: np.ndarray | None,
                  float_layers: tuple[str, ...]) -> bytes:
    """int8 everywhere except ``float_layers`` (tensor names), float32 input and output."""
    import tensorflow as tf

    _prepare(converter, calibration)
    assert calibration is not None
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(float_layers))
    try:
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=_debug_dataset(calibration),
            debug_options=options)
        return bytes(debugger.get_nondebug_quantized_model())
    except Exception as exc:
        raise ConversionError(f"mixed conversion (float layers: {', '.join(float_layers)}) "
                              f"failed: {type(exc).__name__}: {exc}") from exc
