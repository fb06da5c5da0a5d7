"""Load a Keras model (.keras, .h5, SavedModel folder) and describe what it is.

Imports TensorFlow lazily: only the conversion child processes call into here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConversionError

RNN_LAYERS = frozenset({"LSTM", "GRU", "SimpleRNN"})
SUPPORTED_LAYERS = frozenset({
    "InputLayer", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "Flatten", "Reshape", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "GaussianNoise", "BatchNormalization", "LayerNormalization",
    "Activation", "ReLU", "LeakyReLU", "Softmax", "ELU", "PReLU", "Rescaling",
    "Normalization", "ZeroPadding2D", "Cropping2D", "UpSampling2D", "Add", "Concatenate",
    "Multiply", "Average", "Maximum", "Minimum", "Subtract", "Permute", "RepeatVector",
    "TimeDistributed", "Bidirectional", "Masking", "Identity", "Sequential", "Functional",
    "Model", *RNN_LAYERS,
})
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass(frozen=True)
class ModelInfo:
    """What the converter needs to know about a loaded model."""

    task: str  # "frame" or "sequence"
    input_shape: tuple[int, ...]  # without the batch dimension
    n_outputs: int
    has_rnn: bool
    source: str  # "keras" or "saved_model"


def check_model_path(path: Path) -> str:
    """Return ``keras`` or ``saved_model``; raise naming what is wrong with ``path``."""
    if not path.exists():
        raise ConversionError(f"{path}: model file not found")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise ConversionError(f"{path}: a folder but not a SavedModel (no saved_model.pb)")
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise ConversionError(f"{path}: not a model file: expected .keras, .h5 or a "
                              f"SavedModel folder")
    return "keras"


def load_keras_model(path: Path) -> Any:
    """Load a .keras / .h5 model with Keras 3, or a SavedModel's Keras model when it has one."""
    import keras

    kind = check_model_path(path)
    if kind == "saved_model":
        raise ConversionError(f"{path}: a SavedModel folder has no Keras model; use "
                              f"load_saved_model")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise ConversionError(f"{path}: not a readable Keras model: "
                              f"{type(exc).__name__}: {exc}") from exc


def load_saved_model(path: Path) -> Any:
    """Load a SavedModel and return its serving concrete function."""
    import tensorflow as tf

    check_model_path(path)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ConversionError(f"{path}: not a readable SavedModel: "
                              f"{type(exc).__name__}: {exc}") from exc
    signatures = dict(getattr(loaded, "signatures", {}))
    if "serving_default" not in signatures:
        raise ConversionError(f"{path}: the SavedModel has no serving_default signature "
                              f"(found: {', '.join(signatures) or 'none'})")
    return loaded, signatures["serving_default"]


def iter_layers(model: Any) -> list[Any]:
    """Every layer, nested models and wrappers flattened."""
    out: list[Any] = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(iter_layers(layer))
        inner = getattr(layer, "layer", None) or getattr(layer, "forward_layer", None)
        if inner is not None:
            out.append(inner)
    return out


def check_layers(model: Any, allow_unknown: bool = False) -> None:
    """Raise ConversionError naming the first layer the converter does not support."""
    if allow_unknown:
        return
    for layer in iter_layers(model):
        kind = type(layer).__name__
        if kind not in SUPPORTED_LAYERS:
            raise ConversionError(f"unsupported layer {layer.name!r} of type {kind}: the "
                                  f"converter only handles builtin Keras layers "
                                  f"(use --allow-flex to try anyway)")


def describe_model(model: Any, source: str = "keras") -> ModelInfo:
    """Task from input rank: [N,H,W,C] is a frame model, [N,T,F] a sequence model."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConversionError(f"the model must have one input and one output, found "
                              f"{len(model.inputs)} and {len(model.outputs)}")
    shape = tuple(model.inputs[0].shape)[1:]
    out_shape = tuple(model.outputs[0].shape)[1:]
    return _info_from_shapes(shape, out_shape,
                             any(type(x).__name__ in RNN_LAYERS for x in iter_layers(model)),
                             source)


def _info_from_shapes(shape: tuple[Any, ...], out_shape: tuple[Any, ...], has_rnn: bool,
                      source: str) -> ModelInfo:
    if any(d is None for d in shape):
        raise ConversionError(f"the model input shape {shape} has an unknown dimension; "
                              f"give the model a fixed input size")
    if len(shape) == 3:
        task = "frame"
    elif len(shape) == 2:
        task = "sequence"
    else:
        raise ConversionError(f"input shape {shape}: expected [H, W, C] images or "
                              f"[steps, features] sequences")
    if len(out_shape) != 1 or out_shape[0] is None:
        raise ConversionError(f"output shape {out_shape}: expected one vector of class scores")
    return ModelInfo(task, tuple(int(d) for d in shape), int(out_shape[0]), has_rnn, source)


def describe_saved_model(signature: Any) -> ModelInfo:
    ins = [s for s in signature.structured_input_signature[1].values()]
    outs = list(signature.structured_outputs.values())
    if len(ins) != 1 or len(outs) != 1:
        raise ConversionError(f"the SavedModel must have one input and one output, found "
                              f"{len(ins)} and {len(outs)}")
    graph_ops = {op.type for op in signature.graph.get_operations()}
    has_rnn = bool(graph_ops & {"While", "StatelessWhile", "CudnnRNNV3"})
    return _info_from_shapes(tuple(ins[0].shape)[1:], tuple(outs[0].shape)[1:], has_rnn,
                             "saved_model")
