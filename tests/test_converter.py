"""edge-convert end to end on the reference models: the fast, representative subset.

Every mode on both models is in tests/test_converter_modes.py (marked slow).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.files import sha256_file
from agent.inference.engine import Engine
from agent.manifest import load_manifest
from converter.cli import main
from converter.options import forbidden_ops
from tests.support.reference_models import NATIVE_LINE, ReferenceModel

# the session's reference models train inside the first test's setup: on a busy machine
# that alone can take minutes
pytestmark = pytest.mark.timeout(1800)
CNN_INT8_MAX_DROP = 1.5
FLOAT_MAX_DROP = 0.5
LSTM_MIN_AGREEMENT = 0.99


def convert(model: Path, ref: ReferenceModel, out: Path, *extra: str) -> dict[str, Any]:
    """Run edge-convert; return the report and check the written files agree with it."""
    name = "m"
    assert main([str(model), *ref.convert_args(out, "--name", name, *extra)]) == 0
    manifest = load_manifest(out / f"{name}.json")
    assert manifest.sha256 == sha256_file(out / f"{name}.tflite")
    Engine(out / f"{name}.tflite").check_manifest(manifest)
    assert sorted(p.name for p in out.iterdir()) == [f"{name}.json", f"{name}.report.json",
                                                      f"{name}.tflite"]
    report = json.loads((out / f"{name}.report.json").read_text())
    chosen = next(r for r in report["results"] if r["mode"] == manifest.quantize
                  and not r["error"])
    return {"manifest": manifest, "report": report, "chosen": chosen}


def test_cnn_int8_full_integer_within_drop(cnn: ReferenceModel,
                                           tmp_path: Path) -> None:
    got = convert(cnn.keras, cnn, tmp_path, "--quantize", "int8")
    manifest, chosen = got["manifest"], got["chosen"]
    assert manifest.input.dtype == "int8" and manifest.output.dtype == "int8"
    assert manifest.input.quantization is not None
    assert manifest.input.normalization.std == [255.0]
    assert manifest.task == "frame" and manifest.input.color == "gray"
    assert chosen["drop_points"] <= CNN_INT8_MAX_DROP
    assert set(chosen["latency_ms"]) == {"1", "2"}
    assert chosen["xnnpack_nodes"] > 0 and not chosen["forbidden"]


def test_cnn_float32_matches_keras_and_prints_no_native_log(
        cnn: ReferenceModel, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Also: TensorFlow's and LiteRT's native lines (from the children and the parent) go to
    the log file named at the end, not to the terminal (captured at the descriptors)."""
    log = tmp_path / "tf.log"
    chosen = convert(cnn.keras, cnn, tmp_path / "out", "--quantize", "float32",
                     "--log", str(log))["chosen"]
    assert chosen["drop_points"] <= FLOAT_MAX_DROP
    assert chosen["agreement"] == 1.0 and chosen["max_abs_error"] < 1e-4
    assert chosen["xnnpack_nodes"] == chosen["total_nodes"]
    out, err = capfd.readouterr()
    assert not [line for line in (out + err).splitlines() if NATIVE_LINE.search(line)], err
    assert f"TensorFlow's log: {log}" in out and "chosen: float32" in out
    assert NATIVE_LINE.search(log.read_text())


def test_lstm_float32_unrolled_has_no_loop(lstm: ReferenceModel,
                                          tmp_path: Path) -> None:
    got = convert(lstm.keras, lstm, tmp_path, "--quantize", "float32",
                  "--lstm-path", "unrolled")
    chosen, manifest = got["chosen"], got["manifest"]
    assert chosen["agreement"] >= LSTM_MIN_AGREEMENT
    assert not forbidden_ops(chosen["ops"])
    assert manifest.task == "sequence" and manifest.window is not None
    assert (manifest.window.length, manifest.window.stride, manifest.window.features) == (
        30, 30, 8)
    assert manifest.runtime.lstm_path == "unrolled"
    assert len(manifest.input.normalization.mean) == 8


def test_h5_input(cnn: ReferenceModel, tmp_path: Path) -> None:
    chosen = convert(cnn.h5, cnn, tmp_path, "--quantize",
                     "dynamic")["chosen"]
    assert chosen["drop_points"] <= FLOAT_MAX_DROP


def test_saved_model_input(cnn: ReferenceModel, tmp_path: Path) -> None:
    chosen = convert(cnn.saved_model, cnn, tmp_path, "--quantize",
                     "float32")["chosen"]
    assert chosen["agreement"] == 1.0


def test_committed_artefacts_run_through_the_engine() -> None:
    """agent/data holds what the agent loads: manifests valid, samples as accurate as claimed."""
    from converter.data import InputPrep
    from converter.report import dequantize_output, quantize_input

    data = Path(__file__).resolve().parents[1] / "agent" / "data"
    for name, sample in (("digits_cnn", "digits_sample.npz"),
                         ("gestures_lstm", "gestures_sample.npz")):
        manifest = load_manifest(data / f"{name}.json")
        assert manifest.sha256 == sha256_file(data / manifest.file)
        engine = Engine(data / manifest.file)
        engine.check_manifest(manifest)
        with np.load(data / sample) as archive:
            x, y = archive["x"], archive["y"]
        prep = InputPrep(tuple(manifest.input.shape[1:]),
                         tuple(manifest.input.normalization.mean),
                         tuple(manifest.input.normalization.std))
        xs = prep.normalize(x.reshape(len(x), *manifest.input.shape[1:]))
        hits = [int(np.argmax(dequantize_output(
            engine.invoke(quantize_input(xs[i:i + 1], engine.input_detail)),
            engine.output_detail))) == int(y[i]) for i in range(len(xs))]
        assert np.mean(hits) >= 0.9, name
