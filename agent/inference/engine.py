"""TFLite runtime and delegate selection, and a thin interpreter wrapper.

The runtime package is picked here and only here: ``ai_edge_litert`` (maintained), then
``tflite_runtime``, then ``tensorflow.lite``. Imports happen when an engine is built, so a
missing package cannot break start-up of anything that does not run a model.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from agent.errors import DelegateError, ModelLoadError, ModelMismatchError, RuntimeNotFoundError
from agent.manifest import ModelManifest

log = logging.getLogger(__name__)

RUNTIME_MODULES: dict[str, str] = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite.python.interpreter",
}
RuntimeName = Literal["auto", "ai_edge_litert", "tflite_runtime", "tensorflow"]
DEFAULT_RUNTIME_ORDER: tuple[str, ...] = ("ai_edge_litert", "tflite_runtime", "tensorflow")


@dataclass(frozen=True)
class DelegateSpec:
    """``xnnpack`` (default CPU path), ``none`` (reference kernels), ``external`` (a delegate
    library), or ``gpu`` (LiteRT's GPU accelerator, ``agent/inference/gpu.py``)."""

    kind: Literal["xnnpack", "none", "external", "gpu"] = "xnnpack"
    library: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    fallback: Literal["cpu", "fail"] = "cpu"


@dataclass(frozen=True)
class RuntimeInfo:
    package: str
    version: str
    delegate: str
    num_threads: int
    fallback_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"package": self.package, "version": self.version, "delegate": self.delegate,
                "num_threads": self.num_threads, "fallback_reason": self.fallback_reason}


def import_runtime(preference: str = "auto",
                   order: Sequence[str] = DEFAULT_RUNTIME_ORDER) -> tuple[ModuleType, str]:
    """Return the interpreter module of the first runtime that imports, and its name."""
    names = list(order) if preference == "auto" else [preference]
    tried: list[str] = []
    for name in names:
        module_path = RUNTIME_MODULES.get(name)
        if module_path is None:
            raise RuntimeNotFoundError(f"unknown runtime {name!r}; choose from "
                                       f"{', '.join(RUNTIME_MODULES)} or auto")
        try:
            return importlib.import_module(module_path), name
        except Exception as exc:  # an installed but broken package is "not available" too
            tried.append(f"{name}: {type(exc).__name__}: {exc}")
    raise RuntimeNotFoundError("no TFLite runtime could be imported (" + "; ".join(tried) + "); "
                               "install ai-edge-litert")


def _package_version(name: str) -> str:
    from importlib import metadata

    dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
            "tensorflow": "tensorflow"}.get(name, name)
    for candidate in (dist, "tensorflow-cpu"):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


class Engine:
    """One loaded interpreter. Not thread-safe: one thread invokes it."""

    def __init__(self, model_path: str | Path, *, num_threads: int = 1,
                 delegate: DelegateSpec | None = None, runtime: str = "auto",
                 model_content: bytes | None = None) -> None:
        delegate = delegate or DelegateSpec()
        module, runtime_name = import_runtime(runtime)
        self.model_path = Path(model_path)
        self._module = module
        content = model_content
        if content is None:
            try:
                content = self.model_path.read_bytes()
            except OSError as exc:
                raise ModelLoadError(f"{self.model_path}: cannot read model file: {exc}") from exc
        delegates, delegate_name, fallback_reason = self._make_delegates(delegate)
        resolver = module.OpResolverType.AUTO
        if delegate.kind == "none" or delegates:
            resolver = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self._interp = module.Interpreter(
                model_content=content, num_threads=num_threads,
                experimental_delegates=delegates or None,
                experimental_op_resolver_type=resolver)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{self.model_path}: the interpreter cannot load this model: "
                                 f"{exc}") from exc
        self.info = RuntimeInfo(runtime_name, _package_version(runtime_name), delegate_name,
                                num_threads, fallback_reason)
        self._refresh_details()
        if delegate.kind == "gpu":
            self._use_gpu(content, delegate)

    # -- delegates -------------------------------------------------------------

    def _make_delegates(self, spec: DelegateSpec) -> tuple[list[Any], str, str | None]:
        if spec.kind in ("xnnpack", "gpu"):  # gpu: the interpreter is its CPU fallback
            return [], "xnnpack", None
        if spec.kind == "none":
            return [], "none", None
        if not spec.library:
            raise DelegateError("delegate.kind is external but delegate.library is not set")
        try:
            d = self._module.load_delegate(spec.library, dict(spec.options))
            return [d], f"external:{Path(spec.library).name}", None
        except (OSError, ValueError, RuntimeError) as exc:
            reason = f"external delegate {spec.library!r} failed to load: {exc}"
            if spec.fallback == "fail":
                raise DelegateError(reason) from exc
            log.warning("%s; falling back to CPU (XNNPACK)", reason)
            return [], "xnnpack", reason

    def _use_gpu(self, content: bytes, spec: DelegateSpec) -> None:
        """Run on LiteRT's GPU accelerator when it can be created; the interpreter stays for
        tensor details and checks, and runs the model itself when the GPU cannot."""
        from agent.inference.gpu import open_gpu_model

        gpu, reason = open_gpu_model(content, spec.options)
        if gpu is None:
            if spec.fallback == "fail":
                raise DelegateError(f"{reason}; delegate.fallback is fail, so the model is "
                                    "not loaded")
            log.warning("%s; falling back to CPU (XNNPACK)", reason)
            self.info = replace(self.info, fallback_reason=reason)
            return
        self.invoke = gpu.invoke  # type: ignore[method-assign]
        self.reset_state = gpu.reset_state  # type: ignore[method-assign]
        self.info = replace(self.info, delegate="gpu")
        log.info("model %s runs on the GPU (LiteRT CompiledModel)", self.model_path.name)

    # -- tensors ---------------------------------------------------------------

    def _refresh_details(self) -> None:
        ins = self._interp.get_input_details()
        outs = self._interp.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise ModelMismatchError(f"{self.model_path}: expected one input and one output "
                                     f"tensor, found {len(ins)} and {len(outs)}")
        self.input_detail: dict[str, Any] = ins[0]
        self.output_detail: dict[str, Any] = outs[0]
        self._in_index = int(ins[0]["index"])
        self._out_index = int(outs[0]["index"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input_detail["shape"])

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input_detail["dtype"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.output_detail["shape"])

    @property
    def output_dtype(self) -> np.dtype:
        return np.dtype(self.output_detail["dtype"])

    def resize_batch(self, batch: int) -> None:
        """Resize the batch dimension (models converted with a dynamic batch only)."""
        shape = list(self.input_shape)
        if shape[0] == batch:
            return
        shape[0] = batch
        try:
            self._interp.resize_tensor_input(self._in_index, shape, strict=True)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelMismatchError(f"{self.model_path}: batch cannot be resized to {batch}: "
                                     f"{exc}") from exc
        self._refresh_details()

    # -- running ---------------------------------------------------------------

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """Run one input (already preprocessed to the input dtype); return a copy of the output."""
        view = self._interp.tensor(self._in_index)
        view()[...] = x  # write in place; the view must be dropped before invoke
        del view
        self._interp.invoke()
        return self._interp.get_tensor(self._out_index)

    def reset_state(self) -> None:
        """Reset variable tensors (fused LSTM state) before an independent window."""
        self._interp.reset_all_variables()

    def time_invoke(self, x: np.ndarray, runs: int = 50, warmup: int = 5) -> list[float]:
        """Invoke latencies in milliseconds, after ``warmup`` untimed runs."""
        for _ in range(warmup):
            self.invoke(x)
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.invoke(x)
            out.append((time.perf_counter() - t0) * 1000.0)
        return out

    def op_details(self) -> list[dict[str, Any]]:
        """Nodes of the execution plan as loaded (``DELEGATE`` nodes stand for partitions),
        with their tensor links; empty when the runtime does not expose them."""
        try:
            return list(self._interp._get_ops_details())  # private API of every runtime
        except AttributeError:
            return []

    def op_names(self) -> list[str]:
        return [str(op["op_name"]) for op in self.op_details()]

    # -- checks ----------------------------------------------------------------

    def check_manifest(self, manifest: ModelManifest) -> None:
        """Raise ModelMismatchError naming every way the model differs from its manifest."""
        problems = []
        if list(self.input_shape[1:]) != list(manifest.input.shape[1:]):
            problems.append(f"input shape {list(self.input_shape)} != manifest "
                            f"{manifest.input.shape}")
        if self.input_dtype.name != manifest.input.dtype:
            problems.append(f"input dtype {self.input_dtype.name} != manifest "
                            f"{manifest.input.dtype}")
        if list(self.output_shape[1:]) != list(manifest.output.shape[1:]):
            problems.append(f"output shape {list(self.output_shape)} != manifest "
                            f"{manifest.output.shape}")
        if self.output_dtype.name != manifest.output.dtype:
            problems.append(f"output dtype {self.output_dtype.name} != manifest "
                            f"{manifest.output.dtype}")
        if manifest.labels and self.output_shape[-1] != len(manifest.labels):
            problems.append(f"output has {self.output_shape[-1]} classes but the manifest lists "
                            f"{len(manifest.labels)} labels")
        for name, spec, detail in (("input", manifest.input.quantization, self.input_detail),
                                   ("output", manifest.output.quantization, self.output_detail)):
            scale, zero = detail.get("quantization", (0.0, 0))
            if spec is not None and not np.isclose(scale, spec.scale, rtol=1e-5):
                problems.append(f"{name} scale {scale} != manifest {spec.scale}")
            if spec is not None and int(zero) != spec.zero_point:
                problems.append(f"{name} zero point {zero} != manifest {spec.zero_point}")
        if problems:
            raise ModelMismatchError(f"{self.model_path.name}: " + "; ".join(problems))
