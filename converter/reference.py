"""The reference models, trained reproducibly, converted, and installed only if no worse.

    python -m converter.reference all --out agent/data       # = make models (cnn and lstm)
    python -m converter.reference keras --out /tmp/models    # a Keras model to try edge-convert on
    python -m converter.reference mobilenet --out DIR        # the int8 benchmark model

Each model trains in a child process with fixed seeds, deterministic ops and fixed thread
pools (``converter.training``), is saved under ``--keras-out`` (not committed) with its data
sets, and converted by edge-convert into a staging folder. Its files replace those in
``--out`` only when its Keras and chosen-mode accuracy are no worse than the ones there
(``--force`` overrides, after printing the comparison). ``keras`` only trains and saves,
then prints the edge-convert command that converts the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from converter.training import (
    DIGITS_LABELS,
    GESTURE_LABELS,
    GESTURE_STEPS,
    Dataset,
    feature_stats,
)

FAMILIES = {"cnn": "digits_cnn", "lstm": "gestures_lstm", "mobilenet": "digits_mobilenet"}
# the held-out slice committed next to each of the agent's models: file name, samples
SAMPLES = {"cnn": ("digits_sample.npz", 200), "lstm": ("gestures_sample.npz", 100)}
ACCURACY_TOLERANCE = 1e-6


def dataset(which: str) -> Dataset:
    """The model's data (generated or shipped in a package; the same on every run)."""
    from converter import training

    if which == "cnn":
        return training.digits_dataset()
    if which == "lstm":
        return training.gestures_dataset()
    from converter.mobilenet import mnist_dataset

    return mnist_dataset(training.SEED)


def labels_of(which: str) -> tuple[str, ...]:
    return GESTURE_LABELS if which == "lstm" else DIGITS_LABELS


def train_and_save(which: str, keras_dir: Path, extra_formats: bool = False) -> float:
    """Runs in a child: train deterministically, save ``keras_dir/<name>.keras``; accuracy."""
    from converter import training

    training.prepare_determinism()
    data = dataset(which)
    if which == "cnn":
        model = training.train_cnn(data)
        x_test = data.x_test[..., None].astype(np.float32) / 255.0
    elif which == "lstm":
        model = training.train_lstm(data)
        mean, std = feature_stats(data.x_train)
        x_test = (data.x_test - np.float32(mean)) / np.float32(std)
    else:
        from converter.mobilenet import mobilenet_test_input, train_mobilenet

        model = train_mobilenet(data, training.SEED)
        x_test = mobilenet_test_input(data)
    keras_dir.mkdir(parents=True, exist_ok=True)
    path = keras_dir / f"{FAMILIES[which]}.keras"
    model.save(path)
    if extra_formats:
        save_extra_formats(model, path)
    return training.keras_accuracy(model, x_test, data.y_test)


def save_extra_formats(model: Any, path: Path) -> None:
    """``NAME.h5``, ``NAME_savedmodel`` (Keras 3 export) and, when tf-keras is installed,
    ``NAME_tfkeras_savedmodel`` (a SavedModel that carries its Keras model)."""
    from converter.fused import tf_keras_available, to_tf_keras

    model.save(path.with_suffix(".h5"))
    stem = str(path.with_suffix(""))
    model.export(f"{stem}_savedmodel", verbose=False)
    if tf_keras_available():
        to_tf_keras(model, batch=None).save(f"{stem}_tfkeras_savedmodel", save_format="tf")


def write_sets(which: str, data: Dataset, folder: Path) -> dict[str, Path]:
    """Calibration (train), eval (all held-out), the sample (a held-out slice), labels."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"calibration": folder / f"{which}_calibration.npz",
             "eval": folder / f"{which}_eval.npz", "sample": folder / f"{which}_sample.npz",
             "labels": folder / f"{which}_labels.txt"}
    n_sample = SAMPLES.get(which, ("", 100))[1]
    np.savez_compressed(paths["calibration"], x=data.x_train, y=data.y_train)
    np.savez_compressed(paths["eval"], x=data.x_test, y=data.y_test)
    np.savez_compressed(paths["sample"], x=data.x_test[:n_sample], y=data.y_test[:n_sample])
    paths["labels"].write_text("\n".join(labels_of(which)) + "\n")
    return paths


def conversion_args(which: str, data: Dataset, keras_path: Path, sets: dict[str, Path],
                    out: Path, quantize: str) -> list[str]:
    """The edge-convert command line for one reference model."""
    args = [str(keras_path), "--out", str(out), "--quantize", quantize,
            "--calibration", str(sets["calibration"]), "--eval", str(sets["eval"]),
            "--labels", str(sets["labels"]), "--name", FAMILIES[which],
            "--version", "1.0.0", "--threads", "2"]
    if which == "cnn":
        return [*args, "--color", "gray", "--resize", "stretch", "--mean", "0", "--std", "255"]
    if which == "mobilenet":
        return [*args, "--color", "rgb", "--resize", "stretch", "--mean", "127.5",
                "--std", "127.5"]
    mean, std = feature_stats(data.x_train)
    # Unrolled: runs under XNNPACK, keeps no state between windows, and does not depend on
    # the optional tf-keras package, so `make models` gives the same graph everywhere.
    return [*args, "--stride", str(GESTURE_STEPS), "--lstm-path", "unrolled",
            "--mean", *map(str, mean), "--std", *map(str, std)]


def prepare(which: str, keras_dir: Path, extra_formats: bool = False
            ) -> tuple[Path, Dataset, dict[str, Path]]:
    """Train and save one model (in a child), write its data sets and labels file."""
    from converter.worker import run_in_child

    accuracy = run_in_child(train_and_save, which, keras_dir, extra_formats)
    keras_path = keras_dir / f"{FAMILIES[which]}.keras"
    print(f"{keras_path.name}: Keras held-out accuracy {accuracy:.4f}", flush=True)
    data = dataset(which)
    return keras_path, data, write_sets(which, data, keras_dir / "data")


def figures(report_file: Path) -> dict[str, Any] | None:
    """Keras and chosen-mode accuracy from a conversion report, or None when there is none."""
    if not report_file.is_file():
        return None
    report = json.loads(report_file.read_text())
    chosen = next((r for r in report.get("results", []) if not r.get("error")
                   and (f"{r['mode']}/{r['lstm_path']}" if r.get("lstm_path") else r["mode"])
                   == report.get("chosen")), {})
    return {"chosen": report.get("chosen"), "keras_accuracy": report.get("keras_accuracy"),
            "accuracy": chosen.get("accuracy")}


def worse_figures(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The figures in which ``new`` is worse than ``old`` (each as a printable line)."""
    worse = []
    for key in ("keras_accuracy", "accuracy"):
        before, after = old.get(key), new.get(key)
        if before is not None and (after is None or after < before - ACCURACY_TOLERANCE):
            worse.append(f"{key} {before} -> {after}")
    return worse


def install(which: str, staged: Path, out: Path, sample: Path | None, force: bool) -> int:
    """Move the staged files into ``out`` unless they are worse than what ``out`` holds."""
    name = FAMILIES[which]
    old, new = figures(out / f"{name}.report.json"), figures(staged / f"{name}.report.json")
    assert new is not None
    if old is not None:
        print(f"{name}: in {out}: {old}; new: {new}")
        worse = worse_figures(old, new)
        if worse and not force:
            print(f"{name}: refusing to overwrite {out}: the new model is worse "
                  f"({'; '.join(worse)}); the new files stay in {staged}; pass --force to "
                  f"install them anyway", file=sys.stderr)
            return 3
        if worse:
            print(f"{name}: --force: installing a worse model ({'; '.join(worse)})",
                  file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    for suffix in (".tflite", ".report.json", ".json"):
        shutil.copyfile(staged / f"{name}{suffix}", out / f".{name}{suffix}.tmp")
        os.replace(out / f".{name}{suffix}.tmp", out / f"{name}{suffix}")
    if sample is not None:
        shutil.copyfile(sample, out / SAMPLES[which][0])
    return 0


def build_reference(which: str, out: Path, keras_dir: Path, quantize: str = "auto",
                    force: bool = False, log: Path | None = None) -> int:
    """Train, convert into ``keras_dir/converted``, install into ``out`` if no worse."""
    from converter.cli import main as convert_main

    keras_path, data, sets = prepare(which, keras_dir)
    staged = keras_dir / "converted"
    shutil.rmtree(staged, ignore_errors=True)
    args = conversion_args(which, data, keras_path, sets, staged, quantize)
    code = convert_main([*args, "--log", str(log)] if log else args)
    if code != 0:
        return code
    sample = sets["sample"] if which in SAMPLES else None
    return install(which, staged, out, sample, force)


def keras_only(which: str, out: Path, extra_formats: bool) -> int:
    """Train and save into a scratch folder; print the edge-convert line that converts it."""
    keras_path, data, sets = prepare(which, out, extra_formats)
    line = conversion_args(which, data, keras_path, sets, out / "converted", "auto")
    print(f"wrote {keras_path} and its data sets in {out / 'data'}; convert it with:")
    print("  edge-convert " + " ".join(line))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m converter.reference",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n")[1])
    p.add_argument("which", choices=("all", "cnn", "lstm", "mobilenet", "keras"),
                   help="all = cnn and lstm; mobilenet = the int8 benchmark model; keras = "
                        "train --model into --out and print the edge-convert line")
    p.add_argument("--out", type=Path, default=Path("agent/data"),
                   help="where the converted files go; for keras the scratch folder "
                        "(default: agent/data)")
    p.add_argument("--keras-out", type=Path, default=Path("models"),
                   help="Keras models, data sets and the staging folder (default: models)")
    p.add_argument("--model", choices=tuple(FAMILIES), default="cnn",
                   help="keras: which model to train (default: cnn)")
    p.add_argument("--quantize", default="auto", help="edge-convert mode (default: auto)")
    p.add_argument("--force", action="store_true",
                   help="install the new files even when they are worse than the ones in "
                        "--out (default: refuse, exit 3)")
    p.add_argument("--no-convert", action="store_true",
                   help="only train and write the Keras models and data sets (default: off)")
    p.add_argument("--extra-formats", action="store_true",
                   help="also save each model as .h5 and as SavedModel folders (default: off)")
    p.add_argument("--log", type=Path,
                   help="file for TensorFlow's native log lines (default: a new "
                        "reference-*.log in the temp folder)")
    return p


def run(args: argparse.Namespace, log: Path) -> int:
    if args.which == "keras":
        return keras_only(args.model, args.out, args.extra_formats)
    targets = ("cnn", "lstm") if args.which == "all" else (args.which,)
    for which in targets:
        if args.no_convert:
            prepare(which, args.keras_out, args.extra_formats)
            continue
        code = build_reference(which, args.out, args.keras_out / which, args.quantize,
                               args.force, log)
        if code != 0:
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    from agent.errors import EdgeError
    from converter.native_log import native_log, new_log_file
    from converter.worker import require_tensorflow

    args = build_parser().parse_args(argv)
    log_file = args.log or new_log_file("reference")
    try:
        with native_log(log_file):
            require_tensorflow("python -m converter.reference")
            code = run(args, log_file)
    except EdgeError as exc:
        print(f"reference: error: {exc}", file=sys.stderr)
        code = 2
    print(f"TensorFlow's log: {log_file}", file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
