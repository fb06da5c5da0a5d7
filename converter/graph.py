"""Graph helpers every conversion step shares: the spec, unrolling, tracing, calibration.

A leaf: it imports no other converter module but ``converter.load``. TensorFlow and
Keras are imported inside the functions (they run in the conversion child).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.load import RNN_LAYERS


@dataclass(frozen=True)
class ConvertSpec:
    """Everything one conversion needs; picklable so it can cross into a child process."""

    model_path: str
    mode: str
    lstm_path: str = "unrolled"
    batch: int | None = 1
    allow_flex: bool = False
    float_layers: tuple[str, ...] = field(default_factory=tuple)  # mixed: kept in float


def set_unroll(config: Any) -> Any:
    """Copy of a Keras config with ``unroll=True`` on every recurrent layer."""
    config = copy.deepcopy(config)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") in RNN_LAYERS and isinstance(node.get("config"), dict):
                node["config"]["unroll"] = True
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return config


def rebuild_unrolled(model: Any) -> Any:
    """The same model, recurrent layers rebuilt with ``unroll=True`` (a loop-free graph)."""
    import keras

    config = set_unroll(model.get_config())
    try:
        rebuilt = model.__class__.from_config(config)
    except Exception:
        rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def concrete_function(model: Any, batch: int | None) -> Any:
    import tensorflow as tf

    shape = [batch, *model.inputs[0].shape[1:]]
    spec = tf.TensorSpec(shape, model.inputs[0].dtype or tf.float32, name="input")

    @tf.function(input_signature=[spec])
    def serve(x: Any) -> Any:
        return model(x, training=False)

    return serve.get_concrete_function()


def representative(calibration: np.ndarray) -> Any:
    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(len(calibration)):
            yield [calibration[i:i + 1].astype(np.float32)]

    return gen
