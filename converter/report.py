"""Measure a converted model through the agent's own Engine, and print the report table."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.inference.engine import Engine

LATENCY_RUNS = 200
LATENCY_WARMUP = 20
KEY_WIDTH = 22


@dataclass
class ModeResult:
    """Everything measured for one conversion (mode x LSTM path)."""

    mode: str
    lstm_path: str | None = None
    method: str | None = None  # how, when a mode has more than one way (mixed: layers kept)
    size_bytes: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    xnnpack_nodes: int = 0
    total_nodes: int = 0
    partitions: int = 0
    not_delegated: dict[str, int] = field(default_factory=dict)
    forbidden: list[str] = field(default_factory=list)
    forbidden_sites: dict[str, list[str]] = field(default_factory=dict)
    accuracy: float | None = None
    agreement: float | None = None
    max_abs_error: float | None = None
    drop_points: float | None = None
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    layer_errors: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    content: bytes = field(default=b"", repr=False)

    @property
    def key(self) -> str:
        key = f"{self.mode}/{self.lstm_path}" if self.lstm_path else self.mode
        return f"{key}[{self.method}]" if self.method else key

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("content")
        out["key"] = self.key
        return out


def xnnpack_coverage(op_details: list[dict[str, Any]]) -> tuple[int, int, int, dict[str, int]]:
    """(delegated nodes, total nodes, partitions, histogram of nodes left on the CPU kernels).

    Each DELEGATE node's partition is found by walking back from its outputs through
    their producers until reaching the delegate's own inputs.
    """
    originals = [op for op in op_details if op["op_name"] != "DELEGATE"]
    delegates = [op for op in op_details if op["op_name"] == "DELEGATE"]
    producer = {int(t): op["index"] for op in originals for t in op["outputs"]}
    by_index = {op["index"]: op for op in originals}
    delegated: set[int] = set()
    for node in delegates:
        stop = {int(t) for t in node["inputs"]}
        todo = [int(t) for t in node["outputs"]]
        while todo:
            tensor = todo.pop()
            idx = producer.get(tensor)
            if idx is None or idx in delegated:
                continue
            delegated.add(idx)
            todo += [int(t) for t in by_index[idx]["inputs"] if int(t) not in stop]
    left = Counter(op["op_name"] for op in originals if op["index"] not in delegated)
    return len(delegated), len(originals), len(delegates), dict(left)


def quantize_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Normalised float input to the tensor's dtype, with its own scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def run_all(engine: Engine, x: np.ndarray, reset_state: bool) -> np.ndarray:
    """Run every sample at batch 1, as the agent does; dequantized outputs."""
    outs = []
    for i in range(len(x)):
        if reset_state:
            engine.reset_state()
        q = quantize_input(x[i:i + 1], engine.input_detail)
        outs.append(dequantize_output(engine.invoke(q), engine.output_detail)[0])
    return np.stack(outs)


def tensor_description(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero = detail.get("quantization", (0.0, 0))
    desc: dict[str, Any] = {"shape": [int(d) for d in detail["shape"]],
                            "dtype": np.dtype(detail["dtype"]).name}
    if scale:
        desc["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
    return desc


def latency(engine_path: Path, content: bytes, sample: np.ndarray, threads: int,
            runs: int) -> dict[str, float]:
    engine = Engine(engine_path, num_threads=threads, model_content=content)
    q = quantize_input(sample, engine.input_detail)
    times = engine.time_invoke(q, runs=runs, warmup=LATENCY_WARMUP)
    return {"p50": round(float(np.percentile(times, 50)), 4),
            "p95": round(float(np.percentile(times, 95)), 4)}


def measure(result: ModeResult, content: bytes, x_eval: np.ndarray, y_eval: np.ndarray | None,
            reference: np.ndarray, threads: int, reset_state: bool,
            runs: int = LATENCY_RUNS) -> ModeResult:
    """Fill ``result`` with size, ops, XNNPACK coverage, accuracy and latency."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{result.mode}.tflite"
        path.write_bytes(content)
        engine = Engine(path, num_threads=1, model_content=content)
        (result.xnnpack_nodes, result.total_nodes, result.partitions,
         result.not_delegated) = xnnpack_coverage(engine.op_details())
        result.size_bytes = len(content)
        result.input = tensor_description(engine.input_detail)
        result.output = tensor_description(engine.output_detail)
        outputs = run_all(engine, x_eval, reset_state)
        top1 = outputs.argmax(axis=1)
        result.agreement = round(float(np.mean(top1 == reference.argmax(axis=1))), 6)
        result.max_abs_error = round(float(np.max(np.abs(outputs - reference))), 6)
        if y_eval is not None:
            result.accuracy = round(float(np.mean(top1 == y_eval)), 6)
        for t in sorted({1, threads}):
            result.latency_ms[str(t)] = latency(path, content, x_eval[:1], t, runs)
    return result


def set_drops(results: list[ModeResult], keras_accuracy: float | None) -> None:
    """Accuracy drop in points vs Keras (or disagreement with Keras when there are no labels)."""
    for r in results:
        if r.error:
            continue
        if keras_accuracy is not None and r.accuracy is not None:
            r.drop_points = round((keras_accuracy - r.accuracy) * 100.0, 3)
        elif r.agreement is not None:
            r.drop_points = round((1.0 - r.agreement) * 100.0, 3)


# ------------------------------------------------------------------------------ printing


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: list[ModeResult], threads: int, chosen: str | None,
          keras_accuracy: float | None) -> str:
    """The report as a fixed-width text table."""
    head = (f"{'mode':<{KEY_WIDTH}} {'size KB':>8} {'acc':>7} {'drop':>6} {'agree':>7} "
            f"{'maxerr':>7} "
            f"{'p50@1':>7} {'p95@1':>7} {f'p50@{threads}':>7} {f'p95@{threads}':>7} "
            f"{'xnnpack':>11} {'flags':<10}")
    lines = [head, "-" * len(head)]
    if keras_accuracy is not None:
        lines.append(f"{'keras':<{KEY_WIDTH}} {'':>8} {keras_accuracy:>7.4f}")
    for r in results:
        mark = "*" if r.key == chosen else " "
        if r.error:
            lines.append(f"{mark}{r.key:<{KEY_WIDTH - 1}} FAILED: {r.error[:120]}")
            continue
        one, many = r.latency_ms.get("1", {}), r.latency_ms.get(str(threads), {})
        flags = ",".join(r.forbidden) or "ok"
        lines.append(
            f"{mark}{r.key:<{KEY_WIDTH - 1}} {r.size_bytes / 1024:>8.1f} "
            f"{_fmt(r.accuracy, '.4f'):>7} "
            f"{_fmt(r.drop_points, '.2f'):>6} {_fmt(r.agreement, '.4f'):>7} "
            f"{_fmt(r.max_abs_error, '.4f'):>7} {_fmt(one.get('p50'), '.3f'):>7} "
            f"{_fmt(one.get('p95'), '.3f'):>7} {_fmt(many.get('p50'), '.3f'):>7} "
            f"{_fmt(many.get('p95'), '.3f'):>7} "
            f"{f'{r.xnnpack_nodes}/{r.total_nodes}':>11} {flags:<10}")
    lines.append("latency in ms per invoke at batch 1 through agent.inference.engine.Engine "
                 "(XNNPACK); drop in accuracy points vs Keras; * = chosen")
    return "\n".join(lines)


def ops_summary(result: ModeResult, limit: int = 12) -> str:
    ops = sorted(result.ops.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{name} x{n}" for name, n in ops[:limit])
    more = f", +{len(ops) - limit} more" if len(ops) > limit else ""
    left = ", ".join(f"{k} x{v}" for k, v in sorted(result.not_delegated.items())) or "none"
    return (f"{result.key}: ops {shown}{more}; XNNPACK runs {result.xnnpack_nodes} of "
            f"{result.total_nodes} nodes in {result.partitions} partition(s); "
            f"left on CPU kernels: {left}")
