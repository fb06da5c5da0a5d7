"""One conversion: a Keras model and a mode in, TFLite bytes out, its ops checked.

Runs inside a child process (see ``converter.worker``): TensorFlow is imported here only.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from agent.errors import ConversionError
from converter.graph import ConvertSpec, representative
from converter.options import CALIBRATED_MODES, QUANTIZE_MODES, forbidden_ops
from converter.quantize import convert_mixed
from converter.source import make_converter


def configure(converter: Any, mode: str, calibration: np.ndarray | None,
              allow_flex: bool) -> None:
    """Set the converter's optimisation options for ``mode``."""
    import tensorflow as tf

    builtins = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode in CALIBRATED_MODES:
        if calibration is None or len(calibration) == 0:
            raise ConversionError(f"mode {mode} needs calibration data (--calibration)")
        converter.representative_dataset = representative(calibration)
    if mode == "int8":
        builtins = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif mode == "int16x8":
        builtins = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        converter.inference_input_type = tf.int16
        converter.inference_output_type = tf.int16
    if allow_flex:
        builtins = [*builtins, tf.lite.OpsSet.SELECT_TF_OPS]
        if mode in ("int8", "int16x8"):
            builtins = [tf.lite.OpsSet.TFLITE_BUILTINS, *builtins]
    converter.target_spec.supported_ops = builtins


def loop_error(spec: ConvertSpec, message: str) -> ConversionError | None:
    """A clear error when the graph keeps a recurrent loop (WHILE / tensor-list ops)."""
    if "TensorList" not in message and "While" not in message:
        return None
    layers = sorted(set(re.findall(r"([A-Za-z0-9_.-]+)/(?:while|TensorArray)", message)))
    named = ", ".join(layers) or "a recurrent layer"
    return ConversionError(
        f"mode {spec.mode}: {named} is a recurrent loop (WHILE / TensorList ops) that does not "
        f"become builtin loop-free ops from this input; convert the .keras or .h5 file (the "
        f"converter rebuilds the layer unrolled), or a SavedModel written by tf-keras, or "
        f"pass --allow-flex to keep Flex ops")


def convert(spec: ConvertSpec, calibration: np.ndarray | None) -> bytes:
    """Convert and return the flatbuffer; every failure becomes a ConversionError."""
    if spec.mode not in QUANTIZE_MODES:
        raise ConversionError(f"unknown mode {spec.mode!r}; choose from "
                              f"{', '.join(QUANTIZE_MODES)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    converter = make_converter(spec)
    if spec.mode == "mixed":
        return convert_mixed(converter, calibration, spec.float_layers)
    configure(converter, spec.mode, calibration, spec.allow_flex)
    try:
        return bytes(converter.convert())
    except ConversionError:
        raise
    except Exception as exc:
        loop = loop_error(spec, str(exc))
        if loop is not None:
            raise loop from exc
        first = str(exc).strip().splitlines()[:6]
        raise ConversionError(f"TFLite conversion in mode {spec.mode} failed: "
                              f"{type(exc).__name__}: {' | '.join(first)}") from exc


def _op_names(model: Any, schema: Any) -> list[str]:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(custom.decode() if custom else names.get(builtin, str(builtin)))
    return codes


def tensor_scope(name: str) -> str:
    """The layer (name scope) a TFLite tensor comes from: ``model/lstm/while;...`` -> model/lstm."""
    parts = name.split(";")[0].split("/")
    return "/".join(parts[:-1]) or parts[0]


def graph_ops(content: bytes) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Op counts over every subgraph (WHILE bodies included), and for each forbidden op the
    layers (name scopes of its outputs) it comes from."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    codes = _op_names(model, schema)
    counts: dict[str, int] = {}
    sites: dict[str, set[str]] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            name = codes[op.OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
            if forbidden_ops([name]):
                sites.setdefault(name, set()).update(
                    tensor_scope(graph.Tensors(op.Outputs(j)).Name().decode())
                    for j in range(op.OutputsLength()))
    return counts, {op: sorted(scopes) for op, scopes in sites.items()}


def convert_listed(spec: ConvertSpec, calibration: np.ndarray | None
                   ) -> tuple[bytes, dict[str, int], dict[str, list[str]]]:
    """Convert and list the ops; the caller refuses Flex/custom/WHILE (``options.refusal``)."""
    content = convert(spec, calibration)
    ops, sites = graph_ops(content)
    return content, ops, sites
