"""The models the benchmark runs, converted with the converter's own API and cached.

* the two reference models (``converter.reference`` trains them) in every quantization mode;
* ``keras.applications.MobileNetV2`` (224x224x3, random weights, 10 classes) at alpha 0.35
  and 1.0, calibrated on synthetic camera frames, so figures say something about real
  cameras.

Everything lands under ``<cache>/<family>/``: the Keras model, its data sets, and one folder
per mode with the ``.tflite``, manifest and converter report. TensorFlow runs only in child
processes (``converter.worker.run_in_child``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.common import scene_frame
from converter.options import AUTO_MODES

MOBILENET_MODES = ("float32", "float16", "dynamic", "int8")
MOBILENET_CLASSES = 10
MOBILENET_CALIBRATION = 32


@dataclass(frozen=True)
class Variant:
    """One converted model: a family (the Keras model) in one quantization mode."""

    family: str
    mode: str
    manifest: Path
    keras: Path
    size_bytes: int
    accuracy: float | None
    agreement: float | None
    keras_accuracy: float | None
    task: str

    @property
    def key(self) -> str:
        return f"{self.family}/{self.mode}"

    @property
    def tflite(self) -> Path:
        return self.manifest.with_suffix(".tflite")


def _variant(family: str, mode: str, out: Path, keras: Path) -> Variant:
    manifest = out / f"{family}.json"
    report = json.loads((out / f"{family}.report.json").read_text())
    chosen = next(r for r in report["results"] if r["mode"] == mode)
    task = json.loads(manifest.read_text())["task"]
    return Variant(family, mode, manifest, keras, int(chosen["size_bytes"]), chosen["accuracy"],
                   chosen["agreement"], report.get("keras_accuracy"), task)


def _convert(args: list[str]) -> None:
    """One ``edge-convert`` run through its API (parser, options, pipeline)."""
    from converter.cli import build_parser, options
    from converter.pipeline import run

    run(options(build_parser().parse_args(args)))


# ------------------------------------------------------------------ reference models


def reference_variants(which: str, cache: Path, modes: tuple[str, ...] = AUTO_MODES,
                       log: Any = print) -> list[Variant]:
    """``which`` is ``cnn`` or ``lstm``; trains once, converts each missing mode."""
    from converter import reference as ref

    family = "digits_cnn" if which == "cnn" else "gestures_lstm"
    folder = cache / family
    keras_path = folder / f"{family}.keras"
    sets = {k: folder / "data" / f"{which}_{k}.npz" for k in ("calibration", "eval", "sample")}
    sets["labels"] = folder / "data" / f"{which}_labels.txt"
    if not keras_path.exists() or not all(p.exists() for p in sets.values()):
        log(f"training the reference {family} (converter.reference, in a child) ...")
        ref.prepare(which, folder)
    data = _reference_data(which, sets)
    out = []
    for mode in modes:
        target = folder / mode
        if not (target / f"{family}.json").exists():
            log(f"converting {family} {mode} ...")
            args = ref.conversion_args(which, data, keras_path, sets, target, mode)
            _convert([*args, "--latency-runs", "30", "--lstm-path", "unrolled"])
        out.append(_variant(family, mode, target, keras_path))
    return out


def _reference_data(which: str, sets: dict[str, Path]) -> Any:
    from converter.training import Dataset

    with np.load(sets["calibration"]) as cal, np.load(sets["eval"]) as ev:
        return Dataset(cal["x"], cal["y"], ev["x"], ev["y"])


# ------------------------------------------------------------------ MobileNetV2


def build_mobilenet(alpha: float, path: str) -> None:
    """Runs in a child: save an untrained MobileNetV2 (224x224x3, 10 classes)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(1234)
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=alpha,
                                           weights=None, classes=MOBILENET_CLASSES)
    model.save(path)


def camera_images(count: int, offset: int = 0, size: int = 224) -> np.ndarray:
    """Synthetic 640x480 camera frames shrunk to ``size``, RGB, as the agent would feed them."""
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        frame = scene_frame(offset + i * 7)
        small = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        out[i] = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
    return out


def mobilenet_family(alpha: float) -> str:
    return f"mobilenet_v2_{alpha:g}"


def mobilenet_variants(alpha: float, cache: Path, modes: tuple[str, ...] = MOBILENET_MODES,
                       log: Any = print) -> list[Variant]:
    from converter.worker import run_in_child

    family = mobilenet_family(alpha)
    folder = cache / family
    keras_path = folder / f"{family}.keras"
    data = folder / "data"
    if not keras_path.exists():
        log(f"building {family} (keras.applications, weights=None) ...")
        folder.mkdir(parents=True, exist_ok=True)
        run_in_child(build_mobilenet, alpha, str(keras_path))
    if not (data / "labels.txt").exists():
        data.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(data / "calibration.npz", x=camera_images(MOBILENET_CALIBRATION))
        np.savez_compressed(data / "eval.npz", x=camera_images(24, offset=3))
        (data / "labels.txt").write_text(
            "\n".join(f"class_{i}" for i in range(MOBILENET_CLASSES)) + "\n")
    out = []
    for mode in modes:
        target = folder / mode
        if not (target / f"{family}.json").exists():
            log(f"converting {family} {mode} ...")
            _convert([str(keras_path), "--out", str(target), "--quantize", mode,
                      "--calibration", str(data / "calibration.npz"),
                      "--eval", str(data / "eval.npz"), "--labels", str(data / "labels.txt"),
                      "--name", family, "--color", "rgb", "--resize", "stretch",
                      "--mean", "127.5", "--std", "127.5", "--threads", "2",
                      "--latency-runs", "10"])
        out.append(_variant(family, mode, target, keras_path))
    return out


def all_variants(cache: Path, quick: bool, log: Any = print,
                 mobilenet_modes: tuple[str, ...] | None = None) -> dict[str, list[Variant]]:
    """Family name -> its variants, converting whatever the cache lacks."""
    families = {
        "digits_cnn": reference_variants("cnn", cache, log=log),
        "gestures_lstm": reference_variants("lstm", cache, log=log),
    }
    for alpha in ((0.35,) if quick else (0.35, 1.0)):
        modes = mobilenet_modes or (("float32", "int8") if quick else MOBILENET_MODES)
        families[mobilenet_family(alpha)] = mobilenet_variants(alpha, cache, modes, log=log)
    return families


def shipped_and_mobilenet(cache: Path, quick: bool, log: Any = print
                          ) -> dict[str, list[Variant]]:
    """The reference CNN the agent ships (agent/data, int8) and MobileNetV2 int8 only: for
    the tables that need no Keras model (no training, two conversions at most)."""
    from bench.common import DATA

    shipped = Variant("digits_cnn", "int8", DATA / "digits_cnn.json", DATA / "none.keras",
                      (DATA / "digits_cnn.tflite").stat().st_size, None, None, None, "frame")
    families = {"digits_cnn": [shipped]}
    for alpha in ((0.35,) if quick else (0.35, 1.0)):
        families[mobilenet_family(alpha)] = mobilenet_variants(alpha, cache, ("int8",), log=log)
    return families


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="convert and cache the benchmark's models")
    parser.add_argument("--cache", type=Path, default=Path("bench/results/cache"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for family, variants in all_variants(args.cache, args.quick).items():
        for v in variants:
            print(f"{family:22s} {v.mode:9s} {v.size_bytes / 1024:9.1f} KB acc {v.accuracy} "
                  f"agree {v.agreement}")


if __name__ == "__main__":
    main()
