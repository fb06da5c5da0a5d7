"""The tf-keras side of the converter: the fused LSTM path and tf-keras SavedModels.

Keras 3 LSTMs never become TFLite's fused ``UNIDIRECTIONAL_SEQUENCE_LSTM`` op; a
tf-keras (Keras 2) LSTM with a fixed batch of 1 does. This module rebuilds a Keras 3
chain of layers in tf-keras with the same weights. tf-keras must be installed with
``pip install --no-deps tf-keras`` (it would otherwise pull the full ``tensorflow``
package over ``tensorflow-cpu``) and is used with ``TF_USE_LEGACY_KERAS=1``, which
``use_legacy_keras`` sets before TensorFlow is imported in the child process.
Runs inside a child process.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
from pathlib import Path
from typing import Any

from agent.errors import ConversionError
from converter.graph import concrete_function, set_unroll
from converter.load import load_keras_model

TF_KERAS_INSTALL = "pip install --no-deps tf-keras==2.21.0"
DROPPED_KEYS = ("_initializer", "_regularizer", "_constraint")


def tf_keras_available() -> bool:
    return importlib.util.find_spec("tf_keras") is not None


def use_legacy_keras() -> None:
    """Make ``tf.keras`` mean tf-keras in this process (call before importing TensorFlow)."""
    if not tf_keras_available():
        raise ConversionError(f"the fused LSTM path needs tf-keras: {TF_KERAS_INSTALL}")
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


def _layer_config(layer: Any, cls: type) -> dict[str, Any]:
    """The Keras 3 layer's config, limited to what the tf-keras constructor accepts."""
    accepted = set(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in layer.get_config().items()
            if k in accepted and k not in ("dtype", "name") and not k.endswith(DROPPED_KEYS)}


def _chain_layers(model: Any) -> list[Any]:
    """The model's layers when they form one chain (Sequential, or a linear functional)."""
    layers = [x for x in model.layers if type(x).__name__ != "InputLayer"]
    if type(model).__name__ == "Sequential":
        return layers
    for prev, layer in itertools.pairwise(layers):
        inbound = [n for n in getattr(layer, "_inbound_nodes", [])]
        parents = {id(t._keras_history.operation) for n in inbound for t in n.input_tensors}
        if parents != {id(prev)}:
            raise ConversionError(f"the fused LSTM path handles a chain of layers only; layer "
                                  f"{layer.name!r} has other inputs (use --lstm-path unrolled)")
    return layers


def to_tf_keras(model: Any, batch: int | None = 1) -> Any:
    """A tf-keras copy of a Keras 3 chain model with a fixed batch size, same weights."""
    import tf_keras

    shape = tuple(model.inputs[0].shape[1:])
    inputs = tf_keras.Input(batch_shape=(batch, *shape))
    x = inputs
    for layer in _chain_layers(model):
        kind = type(layer).__name__
        cls = getattr(tf_keras.layers, kind, None)
        if cls is None or kind in ("Bidirectional", "TimeDistributed"):
            raise ConversionError(f"the fused LSTM path cannot rebuild layer {layer.name!r} "
                                  f"({kind}) in tf-keras; use --lstm-path unrolled")
        twin = cls(name=layer.name, **_layer_config(layer, cls))
        x = twin(x)
        twin.set_weights(layer.get_weights())
    return tf_keras.Model(inputs, x, name=model.name)


def fused_converter(path: Path, mode: str) -> Any:
    """A converter whose LSTMs become UNIDIRECTIONAL_SEQUENCE_LSTM ops (batch 1)."""
    import tensorflow as tf

    if mode == "int16x8":
        raise ConversionError("the fused LSTM op has no int16x8 kernel; use --lstm-path "
                              "unrolled for int16x8")
    twin = to_tf_keras(load_keras_model(path))
    return tf.lite.TFLiteConverter.from_keras_model(twin)


def has_keras_metadata(path: Path) -> bool:
    """A SavedModel written by tf-keras carries its Keras model (keras_metadata.pb)."""
    return (path / "keras_metadata.pb").is_file()


def load_tf_keras_saved_model(path: Path) -> Any:
    if not tf_keras_available():
        raise ConversionError(f"{path}: this SavedModel holds a tf-keras model with recurrent "
                              f"layers; converting it needs tf-keras: {TF_KERAS_INSTALL}")
    import tf_keras

    try:
        return tf_keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise ConversionError(f"{path}: tf-keras cannot load this SavedModel: "
                              f"{type(exc).__name__}: {exc}") from exc


def tf_keras_converter(path: Path, lstm_path: str, batch: int | None) -> Any:
    """Converter for a tf-keras SavedModel: recurrent layers unrolled, or fused at batch 1."""
    import tensorflow as tf

    model = load_tf_keras_saved_model(path)
    if lstm_path == "fused":
        import tf_keras

        inputs = tf_keras.Input(batch_shape=(1, *model.inputs[0].shape[1:]))
        x = inputs
        for layer in [x for x in model.layers if type(x).__name__ != "InputLayer"]:
            x = layer(x)
        return tf.lite.TFLiteConverter.from_keras_model(tf_keras.Model(inputs, x))
    rebuilt = model.__class__.from_config(set_unroll(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete_function(rebuilt, batch)])
