"""Reference Keras models for the converter tests, trained once per session in a temp folder.

Training runs in a subprocess (``python -m converter.reference --no-convert``) so the
test process never imports TensorFlow; the result is cached for the session.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what TensorFlow, absl, oneDNN and LiteRT write from native code
NATIVE_LINE = re.compile(r"^[IWEF]\d{4} |oneDNN|absl|XNNPACK delegate|cpu_feature_guard|"
                         r"UserWarning|rebuild TensorFlow|fully_quantize|^INFO: ")


@dataclass(frozen=True)
class ReferenceModel:
    which: str  # "cnn" or "lstm"
    keras: Path
    h5: Path
    saved_model: Path
    calibration: Path
    eval: Path
    labels: Path
    norm_args: tuple[str, ...]  # --mean/--std (and --stride) for edge-convert

    def convert_args(self, out: Path, *extra: str) -> list[str]:
        return ["--out", str(out), "--calibration", str(self.calibration), "--eval",
                str(self.eval), "--labels", str(self.labels), "--threads", "2",
                "--latency-runs", "20", *self.norm_args, *extra]


@functools.cache
def train_reference(which: str, folder: Path) -> ReferenceModel:
    """Cached per folder, so test modules that import the fixtures share one training run."""
    proc = subprocess.run([sys.executable, "-m", "converter.reference", which, "--no-convert",
                           "--extra-formats", "--keras-out", str(folder)],
                          cwd=ROOT, check=True, capture_output=True, text=True, timeout=1500)
    noise = [line for line in (proc.stdout + proc.stderr).splitlines()
             if NATIVE_LINE.search(line)]
    assert not noise, f"training printed TensorFlow's native log lines: {noise[:3]}"
    name = "digits_cnn" if which == "cnn" else "gestures_lstm"
    data = folder / "data"
    if which == "cnn":
        norm: tuple[str, ...] = ("--mean", "0", "--std", "255")
    else:
        from converter.training import feature_stats, gestures_dataset

        mean, std = feature_stats(gestures_dataset().x_train)
        norm = ("--mean", *map(str, mean), "--std", *map(str, std), "--stride", "30")
    return ReferenceModel(which, folder / f"{name}.keras", folder / f"{name}.h5",
                          folder / f"{name}_savedmodel", data / f"{which}_calibration.npz",
                          data / f"{which}_eval.npz", data / f"{which}_labels.txt", norm)


def reference_model(which: str, factory: pytest.TempPathFactory) -> ReferenceModel:
    """The session's trained model (use from a session-scoped fixture in the test module)."""
    return train_reference(which, factory.getbasetemp() / f"reference_{which}")
