"""A TFLiteConverter for a model source: .keras/.h5, a SavedModel, a tf-keras SavedModel.

Runs inside a child process (see ``converter.worker``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter.fused import fused_converter, has_keras_metadata, tf_keras_converter
from converter.graph import ConvertSpec, concrete_function, rebuild_unrolled
from converter.load import (
    check_layers,
    check_model_path,
    describe_model,
    load_keras_model,
    load_saved_model,
)


def make_converter(spec: ConvertSpec) -> Any:
    """A TFLiteConverter for the model at ``spec.model_path``, prepared for its LSTM path."""
    import tensorflow as tf

    path = Path(spec.model_path)
    if check_model_path(path) == "saved_model":
        if has_keras_metadata(path):
            return tf_keras_converter(path, spec.lstm_path, spec.batch)
        return saved_model_converter(path, spec)
    model = load_keras_model(path)
    check_layers(model, allow_unknown=spec.allow_flex)
    info = describe_model(model)
    if info.has_rnn and spec.lstm_path == "fused":
        return fused_converter(path, spec.mode)
    if info.has_rnn:
        model = rebuild_unrolled(model)
    # Never pass the Keras 3 model as a second argument: that writes a weightless model.
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [concrete_function(model, spec.batch)])


def saved_model_converter(path: Path, spec: ConvertSpec) -> Any:
    """A SavedModel's serving function, traced again at the spec's batch size."""
    import tensorflow as tf

    loaded, signature = load_saved_model(path)
    name, in_spec = next(iter(signature.structured_input_signature[1].items()))
    fixed = tf.TensorSpec([spec.batch, *in_spec.shape[1:]], in_spec.dtype, name=name)
    function = tf.function(lambda x: signature(**{name: x}),
                           input_signature=[fixed]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    if spec.allow_flex:
        converter._experimental_lower_tensor_list_ops = False
    converter.edge_keepalive = loaded  # the variables die with the loaded object
    return converter
