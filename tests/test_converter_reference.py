"""Reference models: never overwritten by worse ones without saying so; reproducible (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from converter.reference import install

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "agent" / "data"


def accuracies(report: dict[str, object]) -> dict[str, float]:
    """Accuracy per candidate (mode and LSTM path) of a conversion report."""
    return {f"{r['mode']}/{r['lstm_path']}" if r["lstm_path"] else r["mode"]: r["accuracy"]
            for r in report["results"] if not r["error"] and not r.get("method")}


def write_model(folder: Path, keras: float, accuracy: float, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    report = {"chosen": "int8", "keras_accuracy": keras,
              "results": [{"mode": "int8", "lstm_path": None, "key": "int8", "error": None,
                           "accuracy": accuracy}]}
    (folder / "digits_cnn.report.json").write_text(json.dumps(report))
    (folder / "digits_cnn.json").write_text(tag)
    (folder / "digits_cnn.tflite").write_bytes(tag.encode())


def test_a_worse_model_is_refused_unless_forced(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out, staged = tmp_path / "out", tmp_path / "staged"
    write_model(out, 0.978, 0.978, "committed")
    write_model(staged, 0.972, 0.975, "new")
    assert install("cnn", staged, out, None, force=False) == 3
    captured = capsys.readouterr()
    assert "refusing to overwrite" in captured.err
    assert "keras_accuracy 0.978 -> 0.972" in captured.err
    assert "--force" in captured.err
    assert (out / "digits_cnn.tflite").read_bytes() == b"committed"
    assert install("cnn", staged, out, None, force=True) == 0
    assert "installing a worse model" in capsys.readouterr().err
    assert (out / "digits_cnn.tflite").read_bytes() == b"new"


def test_an_equal_or_better_model_is_installed(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out, staged = tmp_path / "out", tmp_path / "staged"
    write_model(out, 0.97, 0.96, "committed")
    write_model(staged, 0.97, 0.965, "new")
    assert install("cnn", staged, out, None, force=False) == 0
    assert "committed" not in (out / "digits_cnn.json").read_text()
    assert "new:" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("which", ["cnn", "lstm"])
def test_make_models_reproduces_the_committed_figures(tmp_path: Path, which: str) -> None:
    """Retrain and reconvert (as `make models` does) into a scratch copy of agent/data: the
    figures equal the committed ones, so the files are installed (exit 0, not 3)."""
    name = "digits_cnn" if which == "cnn" else "gestures_lstm"
    committed = json.loads((DATA / f"{name}.report.json").read_text())
    out = tmp_path / "data"
    out.mkdir()
    (out / f"{name}.report.json").write_text(json.dumps(committed))
    proc = subprocess.run([sys.executable, "-m", "converter.reference", which, "--out", str(out),
                           "--keras-out", str(tmp_path / "models")], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    new = json.loads((out / f"{name}.report.json").read_text())
    assert new["keras_accuracy"] == committed["keras_accuracy"]
    before, after = accuracies(committed), accuracies(new)
    assert {k: after.get(k) for k in before} == before
