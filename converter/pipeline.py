"""edge-convert from start to end: inspect, convert each mode, measure, choose, write.

TensorFlow runs only in child processes (``converter.worker``); this process loads
data, measures through ``agent.inference.engine.Engine`` and writes the files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ConversionError
from agent.manifest import (
    InputSpec,
    ModelManifest,
    Normalization,
    OutputSpec,
    Quantization,
    RuntimeHints,
    WindowSpec,
)
from converter import worker
from converter.data import (
    DataSet,
    InputPrep,
    calibration_subset,
    check_prep,
    load_data,
    load_labels,
)
from converter.fused import tf_keras_available
from converter.int8 import float_fallback
from converter.load import ModelInfo, check_model_path
from converter.measured import Yardstick, convert_candidates
from converter.options import ConvertOptions
from converter.report import (
    ModeResult,
    ops_summary,
    table,
)
from converter.selection import candidates, choose

log = logging.getLogger(__name__)
EVAL_LIMIT = 1000
SYNTHETIC_SAMPLES = 64
MIN_CALIBRATION = 100


@dataclass
class Outcome:
    chosen: ModeResult
    reason: str
    results: list[ModeResult]
    manifest: ModelManifest
    table: str
    keras_accuracy: float | None
    files: list[Path] = field(default_factory=list)


def input_prep(opts: ConvertOptions, info: ModelInfo) -> InputPrep:
    if info.task == "frame":
        channels = info.input_shape[-1]
        color = opts.color or ("gray" if channels == 1 else "rgb")
        if (color == "gray") != (channels == 1):
            raise ConversionError(f"--color {color} does not fit a model input with {channels} "
                                  f"channel(s)")
        prep = InputPrep(info.input_shape, opts.mean, opts.std, color, opts.resize or "stretch")
    else:
        prep = InputPrep(info.input_shape, opts.mean, opts.std)
    check_prep(prep)
    return prep


def eval_set(opts: ConvertOptions, prep: InputPrep, labels: list[str],
             calibration: DataSet | None) -> DataSet:
    """--eval data; else held-back calibration samples; else synthetic inputs (agreement only)."""
    if opts.eval is not None:
        data = load_data(opts.eval, prep, labels, "eval")
        if data.y is not None and (data.y.min() < 0 or data.y.max() >= len(labels)):
            raise ConversionError(f"eval data {opts.eval}: labels y must be 0..{len(labels) - 1}")
        return DataSet(data.x[:EVAL_LIMIT], None if data.y is None else data.y[:EVAL_LIMIT],
                       data.origin)
    if calibration is not None:
        return DataSet(calibration.x[-min(200, len(calibration.x)):], None,
                       f"{calibration.origin} (calibration samples, agreement only)")
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (SYNTHETIC_SAMPLES, *prep.shape)).astype(np.float32)
    mean, std = np.asarray(prep.mean, np.float32), np.asarray(prep.std, np.float32)
    return DataSet(x * std + mean, None, "synthetic normal inputs (agreement only)")


def prepare(opts: ConvertOptions) -> tuple[ModelInfo, list[str], InputPrep, DataSet | None,
                                            DataSet, np.ndarray]:
    """Inspect the model, load and check the data, compute the Keras reference outputs."""
    check_model_path(opts.model)
    if opts.out.exists() and not opts.out.is_dir():
        raise ConversionError(f"--out {opts.out}: exists and is not a folder")
    with worker.TensorFlowChild() as child:
        info = child.call(worker.inspect_model, str(opts.model), opts.allow_flex)
        labels = (load_labels(opts.labels, info.n_outputs) if opts.labels
                  else [str(i) for i in range(info.n_outputs)])
        prep = input_prep(opts, info)
        calibration = (load_data(opts.calibration, prep, labels, "calibration")
                       if opts.calibration else None)
        data = eval_set(opts, prep, labels, calibration)
        reference = child.call(worker.keras_predict, str(opts.model), prep.normalize(data.x))
    return info, labels, prep, calibration, data, reference


def run(opts: ConvertOptions) -> Outcome:
    """Convert, measure and write; raises ConversionError with a clear message on bad input."""
    info, labels, prep, calibration, data, reference = prepare(opts)
    x_eval = prep.normalize(data.x)
    keras_acc = (round(float(np.mean(reference.argmax(1) == data.y)), 6)
                 if data.y is not None else None)
    calib = (prep.normalize(calibration_subset(calibration, opts.calibration_samples).x)
             if calibration is not None else None)
    if calib is not None and len(calib) < MIN_CALIBRATION:
        log.warning("only %d calibration samples; int8 ranges need a few hundred "
                    "(at least %d) to be reliable", len(calib), MIN_CALIBRATION)
    stick = Yardstick(opts, info.has_rnn, calib, x_eval, data.y, reference, keras_acc)
    specs = candidates(opts, info, calib is not None, tf_keras_available())
    results = convert_candidates(stick, specs)
    results += float_fallback(stick, results)
    chosen, reason = choose(results, opts)
    text = table(results, opts.threads, chosen.key, keras_acc)
    manifest = build_manifest(opts, info, prep, labels, chosen, data, keras_acc)
    outcome = Outcome(chosen, reason, results, manifest, text, keras_acc)
    outcome.files = write_outputs(opts, outcome)
    return outcome


def build_manifest(opts: ConvertOptions, info: ModelInfo, prep: InputPrep, labels: list[str],
                   chosen: ModeResult, data: DataSet, keras_acc: float | None) -> ModelManifest:
    name = opts.name or opts.model.stem
    quant = chosen.input.get("quantization")
    out_quant = chosen.output.get("quantization")
    window = None
    if info.task == "sequence":
        window = WindowSpec(length=info.input_shape[0], stride=opts.stride or info.input_shape[0],
                            features=info.input_shape[1])
    fused = chosen.lstm_path == "fused"
    return ModelManifest(
        name=name, version=opts.version, file=f"{name}.tflite", sha256="0" * 64,
        size_bytes=chosen.size_bytes, task=info.task, quantize=chosen.mode,  # type: ignore[arg-type]
        input=InputSpec(shape=chosen.input["shape"], dtype=chosen.input["dtype"],
                        layout="NHWC" if info.task == "frame" else "NTF",
                        color=prep.color, resize=prep.resize,  # type: ignore[arg-type]
                        normalization=Normalization(mean=list(prep.mean), std=list(prep.std)),
                        quantization=Quantization(**quant) if quant else None),
        output=OutputSpec(shape=chosen.output["shape"], dtype=chosen.output["dtype"],
                          kind="probabilities",
                          quantization=Quantization(**out_quant) if out_quant else None),
        labels=labels, window=window,
        runtime=RuntimeHints(lstm_path=chosen.lstm_path if info.has_rnn else None,  # type: ignore[arg-type]
                             reset_state_per_window=fused),
        validation=validation_figures(chosen, data, keras_acc, opts.threads),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def validation_figures(chosen: ModeResult, data: DataSet, keras_acc: float | None,
                       threads: int) -> dict[str, Any]:
    return {"eval_data": Path(data.origin).name, "eval_samples": len(data.x),
            "keras_accuracy": keras_acc, "accuracy": chosen.accuracy,
            "drop_points": chosen.drop_points, "agreement": chosen.agreement,
            "max_abs_error": chosen.max_abs_error, "latency_ms": chosen.latency_ms,
            "threads": threads, "xnnpack_nodes": chosen.xnnpack_nodes,
            "total_nodes": chosen.total_nodes, "ops": chosen.ops}


def write_outputs(opts: ConvertOptions, outcome: Outcome) -> list[Path]:
    """Write into a temporary folder next to the target, then move each file into place."""
    from agent.files import sha256_file

    name = outcome.manifest.name
    created_out = not opts.out.exists()
    opts.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=opts.out))
    try:
        model_file = tmp / f"{name}.tflite"
        model_file.write_bytes(outcome.chosen.content)
        manifest = outcome.manifest.model_copy(update={"sha256": sha256_file(model_file)})
        outcome.manifest = manifest
        (tmp / f"{name}.json").write_text(manifest.to_json())
        (tmp / f"{name}.report.json").write_text(json.dumps(report_json(outcome), indent=2))
        targets = []
        for f in (model_file, tmp / f"{name}.report.json", tmp / f"{name}.json"):
            os.replace(f, opts.out / f.name)
            targets.append(opts.out / f.name)
        return targets
    except BaseException:
        if created_out:
            shutil.rmtree(opts.out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report_json(outcome: Outcome) -> dict[str, Any]:
    return {"chosen": outcome.chosen.key, "reason": outcome.reason,
            "keras_accuracy": outcome.keras_accuracy,
            "results": [r.as_dict() for r in outcome.results],
            "ops": [ops_summary(r) for r in outcome.results if not r.error],
            "table": outcome.table}
