"""Bad input to edge-convert: a clear message, a non-zero exit, and no files left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converter.cli import main
from tests.support.reference_models import ReferenceModel

# the session's reference models train inside the first test's setup: on a busy machine
# that alone can take minutes
pytestmark = pytest.mark.timeout(1800)
ROOT = Path(__file__).resolve().parents[1]


def fails(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> str:
    """Run edge-convert expecting failure; return stderr; check nothing was written."""
    code = main([*args, "--out", str(out), "--latency-runs", "5"])
    err = capsys.readouterr().err
    assert code != 0
    assert "edge-convert: error:" in err
    assert not out.exists(), f"partial output left in {out}: {list(out.iterdir())}"
    return err


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(capsys, tmp_path / "out", str(tmp_path / "nope.keras"))
    assert "nope.keras: model file not found" in err


def test_not_a_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "not a model file" in fails(capsys, tmp_path / "out", str(text))
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "not a SavedModel" in fails(capsys, tmp_path / "out", str(folder))


def test_corrupt_keras_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04 this is not a keras archive")
    assert "not a readable Keras model" in fails(capsys, tmp_path / "out", str(bad))


def test_calibration_of_wrong_shape(cnn: ReferenceModel, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.zeros((10, 32, 32), np.uint8))
    err = fails(capsys, tmp_path / "out", str(cnn.keras), "--quantize", "int8",
                "--calibration", str(calib))
    assert "x has shape [10, 32, 32]" in err and "[N, 28, 28, 1]" in err


def test_calibration_without_x(cnn: ReferenceModel, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, images=np.zeros((10, 28, 28), np.uint8))
    err = fails(capsys, tmp_path / "out", str(cnn.keras), "--quantize", "int8",
                "--calibration", str(calib))
    assert "no array named 'x'" in err


def test_label_count_mismatch(cnn: ReferenceModel, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    err = fails(capsys, tmp_path / "out", str(cnn.keras), "--labels", str(labels))
    assert "2 labels but the model outputs 10 classes" in err


def test_existing_out_folder_untouched_on_error(cnn: ReferenceModel, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\n")
    code = main([str(cnn.keras), "--out", str(out), "--labels", str(labels)])
    assert code != 0 and "1 labels" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_unsupported_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "odd.keras"
    script = (
        "import keras, sys\n"
        "m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),"
        " keras.layers.UnitNormalization(name='odd_norm'), keras.layers.Dense(3)])\n"
        "m.save(sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", script, str(model)], check=True, cwd=ROOT,
                   capture_output=True, timeout=300)
    err = fails(capsys, tmp_path / "out", str(model))
    assert "unsupported layer 'odd_norm' of type UnitNormalization" in err


def test_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    assert "--threads must be at least 1" in fails(capsys, tmp_path / "out", str(model),
                                                   "--threads", "0")
    out_file = tmp_path / "file"
    out_file.write_text("x")
    assert main([str(model), "--out", str(out_file)]) != 0
    assert "exists and is not a folder" in capsys.readouterr().err
    assert out_file.read_text() == "x"


def test_without_the_converter_extra_says_what_to_install(tmp_path: Path) -> None:
    """TensorFlow, Keras and absl made unimportable in every process (a sitecustomize)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nfor name in ('tensorflow', 'keras', 'absl'):\n    sys.modules[name] = None\n")
    model = tmp_path / "m.keras"
    model.write_bytes(b"PK")
    proc = subprocess.run([sys.executable, "-m", "converter.cli", str(model), "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"},
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "needs the converter extra" in proc.stderr
    assert "pip install 'edge-inference-agent[convert]'" in proc.stderr
    assert "Traceback" not in proc.stderr and "No module named" not in proc.stderr
    assert not (tmp_path / "out").exists()
