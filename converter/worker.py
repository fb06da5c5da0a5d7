"""TensorFlow work in short-lived child processes.

``TFLiteConverter.convert()`` leaks memory on every call (tensorflow issue 122598),
so every conversion, and every other call into TensorFlow, runs in a fresh spawned
process that exits afterwards and returns its memory to the OS. The parent process
never imports TensorFlow.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import numpy as np

from agent.errors import ConversionError
from converter.graph import ConvertSpec
from converter.load import ModelInfo

T = TypeVar("T")
CONVERT_EXTRA_INSTALL = ("pip install 'edge-inference-agent[convert]' (TensorFlow; "
                         "from a checkout: make install-dev)")


def require_tensorflow(prog: str) -> None:
    """Fail with what to install when the converter extra is missing (TensorFlow not imported)."""
    missing = [name for name in ("tensorflow", "keras", "absl")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ConversionError(f"{prog} needs the converter extra, which is not installed "
                              f"(no module {', '.join(missing)}): {CONVERT_EXTRA_INSTALL}")


def _call(pool: ProcessPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    try:
        return pool.submit(fn, *args).result()
    except BrokenProcessPool as exc:
        raise ConversionError(f"{getattr(fn, '__name__', fn)}: the TensorFlow child "
                              f"process crashed (killed or segfault)") from exc


def run_in_child(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a fresh spawned process that exits afterwards."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return _call(pool, fn, *args)


class TensorFlowChild:
    """One spawned process kept for the calls that do not leak (load, describe, predict)."""

    def __enter__(self) -> TensorFlowChild:
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        return self

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return _call(self._pool, fn, *args)

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- the functions below run inside the child -----------------------------------------------


def _quiet() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)


def inspect_model(model_path: str, allow_unknown: bool) -> ModelInfo:
    from pathlib import Path

    _quiet()
    from converter.fused import has_keras_metadata, load_tf_keras_saved_model
    from converter.load import (
        check_layers,
        check_model_path,
        describe_model,
        describe_saved_model,
        load_keras_model,
        load_saved_model,
    )

    path = Path(model_path)
    if check_model_path(path) == "saved_model":
        if has_keras_metadata(path):
            return describe_model(load_tf_keras_saved_model(path), "tf_keras_saved_model")
        return describe_saved_model(load_saved_model(path)[1])
    model = load_keras_model(path)
    check_layers(model, allow_unknown)
    return describe_model(model)


def keras_predict(model_path: str, x: np.ndarray) -> np.ndarray:
    """The source model's outputs on ``x`` (already normalised), batch by batch."""
    from pathlib import Path

    _quiet()
    import tensorflow as tf

    from converter.load import check_model_path, load_keras_model, load_saved_model

    path = Path(model_path)
    if check_model_path(path) == "saved_model":
        _, signature = load_saved_model(path)
        name = next(iter(signature.structured_input_signature[1]))
        outs = [next(iter(signature(**{name: tf.constant(x[i:i + 64])}).values())).numpy()
                for i in range(0, len(x), 64)]
        return np.concatenate(outs).astype(np.float32)
    model = load_keras_model(path)
    return np.asarray(model.predict(x, batch_size=64, verbose=0), np.float32)


def convert_mode(spec: ConvertSpec, calibration: np.ndarray | None
                 ) -> tuple[bytes, dict[str, int], dict[str, list[str]]]:
    from pathlib import Path

    from converter.fused import has_keras_metadata, use_legacy_keras

    path = Path(spec.model_path)
    if spec.lstm_path == "fused" or (path.is_dir() and has_keras_metadata(path)):
        use_legacy_keras()
    _quiet()
    from converter.convert import convert_listed

    return convert_listed(spec, calibration)


def layer_errors(spec: ConvertSpec, calibration: np.ndarray, top: int) -> list[dict[str, Any]]:
    _quiet()
    from converter.quantize import worst_layers

    return worst_layers(spec, calibration, top)
