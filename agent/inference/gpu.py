"""LiteRT's GPU path: ``ai_edge_litert.compiled_model.CompiledModel`` with
``HardwareAccelerator.GPU`` (the WebGPU accelerator shipped in the wheel, over Vulkan on
Linux). Chosen by ``model.delegate.kind: gpu``; imported only then.

Where no GPU adapter is usable the accelerator cannot be created: ``open_gpu_model`` then
returns the reason, and the engine runs the model on the CPU with XNNPACK (``fallback: cpu``)
or refuses it (``fallback: fail``). LiteRT writes the detailed cause (for example
``No adapters found``) to the process's stderr from native code.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.errors import DelegateError

log = logging.getLogger(__name__)

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def gpu_options(options: Mapping[str, str]) -> Any:
    """``delegate.options`` as LiteRT ``GpuOptions`` (boolean fields, e.g. ``enforce_f32``)."""
    from ai_edge_litert.compiled_model import GpuOptions

    known = {f.name for f in dataclasses.fields(GpuOptions)}
    values: dict[str, bool] = {}
    for key, text in options.items():
        if key not in known:
            raise DelegateError(f"delegate.options: {key!r}: not a GPU option; known: "
                                f"{', '.join(sorted(known))}")
        word = str(text).strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise DelegateError(f"delegate.options.{key}: {text!r}: expected true or false")
        values[key] = word in TRUE_WORDS
    return GpuOptions(**values)


class CompiledGpuModel:
    """One model compiled for an accelerator; ``invoke`` has the engine's contract (one
    preprocessed input in, a copy of the output out). Not thread-safe."""

    def __init__(self, content: bytes, *, accelerator: str = "gpu",
                 options: Mapping[str, str] | None = None) -> None:
        from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator, Options

        accel = HardwareAccelerator.GPU if accelerator == "gpu" else HardwareAccelerator.CPU
        opts = Options(accel, gpu_options=gpu_options(options or {})) \
            if accelerator == "gpu" else Options(accel)
        self._model = CompiledModel.from_buffer(content, options=opts)
        signatures = list(self._model.get_signature_list())
        ins = self._model.get_input_tensor_details(signatures[0])
        outs = self._model.get_output_tensor_details(signatures[0])
        if len(ins) != 1 or len(outs) != 1:
            raise DelegateError(f"the GPU path takes one input and one output tensor, found "
                                f"{len(ins)} and {len(outs)}")
        out = next(iter(outs.values()))
        self._out_shape = tuple(int(d) for d in out["shape"])
        self._out_dtype = np.dtype(out["dtype"])
        self._out_count = int(np.prod(self._out_shape))
        self._inputs = self._model.create_input_buffers(0)
        self._outputs = self._model.create_output_buffers(0)
        self.fully_accelerated = bool(self._model.is_fully_accelerated())

    def invoke(self, x: np.ndarray) -> np.ndarray:
        self._inputs[0].write(np.ascontiguousarray(x))
        self._model.run_by_index(0, self._inputs, self._outputs)
        return self._outputs[0].read(self._out_count, self._out_dtype).reshape(self._out_shape)

    def reset_state(self) -> None:
        """Compiled models keep no variable tensors between runs."""


def open_gpu_model(content: bytes, options: Mapping[str, str]) -> tuple[
        CompiledGpuModel | None, str | None]:
    """The model on the GPU, or ``(None, reason)`` when LiteRT cannot run it there.
    A wrong ``delegate.options`` key is a ``DelegateError`` whatever the fallback."""
    gpu_options(options)  # option errors are config errors, never a reason to fall back
    try:
        model = CompiledGpuModel(content, accelerator="gpu", options=options)
    except ImportError as exc:
        return None, f"GPU: ai_edge_litert.compiled_model is not available: {exc}"
    except (RuntimeError, ValueError, DelegateError) as exc:
        detail = " ".join(str(exc).split())[:300]
        return None, (f"GPU: LiteRT could not compile the model for the GPU accelerator "
                      f"({type(exc).__name__}: {detail}); its log on stderr gives the cause, "
                      "e.g. 'No adapters found' where no Vulkan GPU is usable")
    if not model.fully_accelerated:
        log.warning("GPU: some ops of the model run on the CPU (not fully accelerated)")
    return model, None
