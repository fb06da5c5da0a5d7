"""Every mode on both reference models, with the accuracy gates of the issue (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from converter.cli import main
from converter.fused import tf_keras_available
from converter.options import AUTO_MODES, CALIBRATED_MODES, forbidden_ops
from tests.support.reference_models import ReferenceModel

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
ROOT = Path(__file__).resolve().parents[1]
CNN_GATES = {"float32": 0.5, "float16": 0.5, "dynamic": 0.5, "int8": 1.5, "int16x8": 1.5,
             "mixed": 1.5}
LSTM_FLOAT_MODES = ("float32", "float16", "dynamic")
LSTM_MIN_AGREEMENT = 0.99
needs_tf_keras = pytest.mark.skipif(not tf_keras_available(),
                                    reason="tf-keras not installed (pip install --no-deps "
                                           "tf-keras==2.21.0)")


def report(model: Path, ref: ReferenceModel, out: Path, *extra: str) -> dict[str, Any]:
    assert main([str(model), *ref.convert_args(out, "--name", "m", *extra)]) == 0
    return json.loads((out / "m.report.json").read_text())


def chosen(rep: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in rep["results"] if r["key"] == rep["chosen"])


def assert_loop_free(result: dict[str, Any]) -> None:
    assert not result["error"], result["error"]
    bad = forbidden_ops(result["ops"])
    assert not bad, f"{result['mode']}/{result['lstm_path']}: {bad}"


@pytest.mark.parametrize("mode", sorted(CNN_GATES))
def test_cnn_mode_within_gate(cnn: ReferenceModel, tmp_path: Path, mode: str) -> None:
    result = chosen(report(cnn.keras, cnn, tmp_path, "--quantize", mode))
    assert result["mode"] == mode
    assert result["drop_points"] <= CNN_GATES[mode], result
    if mode == "int8":
        assert result["input"]["dtype"] == "int8" and result["output"]["dtype"] == "int8"


@pytest.mark.parametrize("mode", LSTM_FLOAT_MODES)
@pytest.mark.parametrize("path", ["unrolled", pytest.param("fused", marks=needs_tf_keras)])
def test_lstm_float_modes_agree(lstm: ReferenceModel, tmp_path: Path, mode: str,
                                path: str) -> None:
    result = chosen(report(lstm.keras, lstm, tmp_path, "--quantize", mode, "--lstm-path", path))
    assert result["lstm_path"] == path
    assert result["agreement"] >= LSTM_MIN_AGREEMENT
    assert_loop_free(result)
    if path == "fused":
        assert result["ops"].get("UNIDIRECTIONAL_SEQUENCE_LSTM") == 3


@pytest.mark.parametrize("mode", CALIBRATED_MODES)
def test_lstm_integer_modes_unrolled(lstm: ReferenceModel, tmp_path: Path, mode: str) -> None:
    result = chosen(report(lstm.keras, lstm, tmp_path, "--quantize", mode, "--lstm-path",
                           "unrolled"))
    assert_loop_free(result)
    assert result["drop_points"] <= 1.5


@needs_tf_keras
def test_lstm_fused_int8_and_int16x8(lstm: ReferenceModel, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    result = chosen(report(lstm.keras, lstm, tmp_path / "a", "--quantize", "int8",
                           "--lstm-path", "fused"))
    assert_loop_free(result)
    assert result["drop_points"] <= 1.5
    code = main([str(lstm.keras), *lstm.convert_args(tmp_path / "b", "--quantize", "int16x8",
                                                     "--lstm-path", "fused")])
    assert code != 0 and "no int16x8 kernel" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("which", ["cnn", "lstm"])
def test_auto_picks_within_max_drop(cnn: ReferenceModel, lstm: ReferenceModel, tmp_path: Path,
                                    which: str, capsys: pytest.CaptureFixture[str]) -> None:
    ref = cnn if which == "cnn" else lstm
    rep = report(ref.keras, ref, tmp_path, "--quantize", "auto")
    printed = capsys.readouterr().out
    best = chosen(rep)
    assert best["drop_points"] <= 1.0
    assert "fastest within --max-drop" in rep["reason"]
    assert "chosen:" in printed and "p50@2" in printed
    modes = {r["mode"] for r in rep["results"]}
    assert set(AUTO_MODES) <= modes
    if which == "lstm":
        for r in rep["results"]:
            if not r["error"]:
                assert_loop_free(r)


def test_lstm_h5_input(lstm: ReferenceModel, tmp_path: Path) -> None:
    result = chosen(report(lstm.h5, lstm, tmp_path, "--quantize", "float32",
                           "--lstm-path", "unrolled"))
    assert result["agreement"] >= LSTM_MIN_AGREEMENT
    assert_loop_free(result)


@needs_tf_keras
@pytest.mark.parametrize("path", ["unrolled", "fused"])
def test_lstm_tf_keras_saved_model(lstm: ReferenceModel, tmp_path: Path, path: str) -> None:
    saved = lstm.keras.with_name("gestures_lstm_tfkeras_savedmodel")
    result = chosen(report(saved, lstm, tmp_path, "--quantize", "float32", "--lstm-path", path))
    assert result["agreement"] >= LSTM_MIN_AGREEMENT
    assert_loop_free(result)


def test_lstm_keras3_export_fails_naming_the_layer(lstm: ReferenceModel, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(lstm.saved_model), *lstm.convert_args(tmp_path / "out", "--quantize",
                                                           "float32")])
    err = capsys.readouterr().err
    assert code != 0 and "lstm" in err and "WHILE" in err
    assert not (tmp_path / "out").exists()


def test_auto_keeps_tensorflow_out_of_the_parent(cnn: ReferenceModel, tmp_path: Path) -> None:
    """Conversions run in child processes: the parent neither imports TF nor grows with it.

    The peak is VmHWM of the parent's own memory map: ``ru_maxrss`` would carry over the peak
    of the pytest process that started it (Linux keeps it across vfork + execve)."""
    script = (
        "import re, sys\n"
        "from converter.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported in the parent'\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())\n"
        "print('PEAK_RSS_MB', int(hwm.group(1)) // 1024)\n"
        "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(cnn.keras),
                           *cnn.convert_args(tmp_path / "out", "--quantize", "auto")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.split("PEAK_RSS_MB")[1].split()[0])
    assert peak < 400, f"parent peak RSS {peak} MB"
