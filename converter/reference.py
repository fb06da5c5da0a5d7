"""The two reference models: a digits CNN and a gestures LSTM, trained reproducibly.

    python -m converter.reference all --out agent/data [--keras-out models]

trains both (fixed seeds, about a minute on 2 cores), saves the Keras models to
``--keras-out`` (not committed), converts them with the converter (mode ``auto``
unless ``--quantize`` says otherwise) and writes the .tflite, the manifest and a
held-out sample .npz for each into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEED = 1234
DIGITS_LABELS = tuple(str(i) for i in range(10))
GESTURE_LABELS = ("circle", "shake", "swipe_left", "swipe_right", "tap")
GESTURE_STEPS = 30
GESTURE_FEATURES = 8


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --------------------------------------------------------------------------- data


def digits_dataset(seed: int = SEED) -> Dataset:
    """scikit-learn's 8x8 digits upscaled to 28x28 uint8 images, 80/20 split."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([
        cv2.resize((img * (255.0 / 16.0)).astype(np.float32), (28, 28),
                   interpolation=cv2.INTER_LINEAR) for img in digits.images])
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = len(images) // 5
    test, train = order[:n_test], order[n_test:]
    y = digits.target.astype(np.int64)
    return Dataset(images[train], y[train], images[test], y[test])


def _gesture(label: int, rng: np.random.Generator) -> np.ndarray:
    """One noisy accelerometer + gyroscope + 2 auxiliary channels recording."""
    t = np.linspace(0.0, 1.0, GESTURE_STEPS) * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
    amp = rng.uniform(0.3, 1.2)
    x = np.zeros((GESTURE_STEPS, GESTURE_FEATURES), np.float64)
    x[:, 2] = 1.0  # gravity on z
    centre = rng.uniform(0.35, 0.65)
    bump = np.exp(-((t - centre) ** 2) / (2 * rng.uniform(0.06, 0.12) ** 2))
    if label == 0:  # circle
        phase = rng.uniform(0, 2 * np.pi)
        x[:, 0] += amp * np.sin(2 * np.pi * t + phase)
        x[:, 1] += amp * np.cos(2 * np.pi * t + phase)
        x[:, 5] += amp * 0.8
    elif label == 1:  # shake
        freq = rng.uniform(4.0, 7.0)
        x[:, 0] += amp * 1.2 * np.sin(2 * np.pi * freq * t)
        x[:, 4] += amp * 0.6 * np.cos(2 * np.pi * freq * t)
    elif label in (2, 3):  # swipe left / right
        sign = -1.0 if label == 2 else 1.0
        x[:, 0] += sign * amp * 1.5 * bump
        x[:, 4] += sign * amp * 0.5 * bump
    else:  # tap
        x[:, 2] += amp * 2.5 * bump ** 4
        x[:, 3] += amp * 0.4 * bump ** 2
    x[:, 6] = np.abs(x[:, 0]) + np.abs(x[:, 1])  # auxiliary: horizontal energy
    x[:, 7] = rng.uniform(0.2, 0.8)  # auxiliary: grip pressure (uninformative)
    x += rng.normal(0.0, rng.uniform(0.3, 0.7), x.shape)
    return x.astype(np.float32)


def gestures_dataset(n_train: int = 1500, n_test: int = 500, seed: int = SEED) -> Dataset:
    """Generated gestures, 30 steps x 8 features, 5 balanced classes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n_train + n_test) % len(GESTURE_LABELS)
    rng.shuffle(y)
    x = np.stack([_gesture(int(label), rng) for label in y])
    return Dataset(x[:n_train], y[:n_train].astype(np.int64), x[n_train:],
                   y[n_train:].astype(np.int64))


def feature_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-feature mean and std over every sample and step, rounded for the manifest."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return ([round(float(v), 6) for v in flat.mean(axis=0)],
            [round(float(v), 6) for v in flat.std(axis=0)])


# --------------------------------------------------------------------------- models


def _seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    os.environ["PYTHONHASHSEED"] = str(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_cnn() -> Any:
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1), name="image"),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ], name="digits_cnn")


def build_lstm() -> Any:
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((GESTURE_STEPS, GESTURE_FEATURES), name="window"),
        layers.LSTM(64, return_sequences=True),
        layers.LSTM(64, return_sequences=True),
        layers.LSTM(64),
        layers.Dense(len(GESTURE_LABELS), activation="softmax"),
    ], name="gestures_lstm")


def train_cnn(data: Dataset, epochs: int = 12, seed: int = SEED) -> Any:
    _seed_everything(seed)
    model = build_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x = data.x_train[..., None].astype(np.float32) / 255.0
    model.fit(x, data.y_train, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    return model


def train_lstm(data: Dataset, epochs: int = 15, seed: int = SEED) -> Any:
    _seed_everything(seed)
    mean, std = feature_stats(data.x_train)
    model = build_lstm()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x = (data.x_train - np.float32(mean)) / np.float32(std)
    model.fit(x, data.y_train, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    return model


def keras_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


# --------------------------------------------------------------------------- artefacts


def train_and_save(which: str, keras_dir: Path,
                   extra_formats: bool = False) -> tuple[Path, Dataset]:
    """Train one reference model, save it as ``keras_dir/<name>.keras``, return path + data."""
    keras_dir.mkdir(parents=True, exist_ok=True)
    if which == "cnn":
        data = digits_dataset()
        model = train_cnn(data)
        x_test = data.x_test[..., None].astype(np.float32) / 255.0
        path = keras_dir / "digits_cnn.keras"
    else:
        data = gestures_dataset()
        model = train_lstm(data)
        mean, std = feature_stats(data.x_train)
        x_test = (data.x_test - np.float32(mean)) / np.float32(std)
        path = keras_dir / "gestures_lstm.keras"
    print(f"{path.name}: Keras held-out accuracy {keras_accuracy(model, x_test, data.y_test):.4f}",
          flush=True)
    model.save(path)
    if extra_formats:
        save_extra_formats(model, path)
    return path, data


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
    """Calibration (train), eval (all held-out) and the committed sample (a held-out slice)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_sample = 200 if which == "cnn" else 100
    paths = {"calibration": folder / f"{which}_calibration.npz",
             "eval": folder / f"{which}_eval.npz", "sample": folder / f"{which}_sample.npz"}
    np.savez_compressed(paths["calibration"], x=data.x_train, y=data.y_train)
    np.savez_compressed(paths["eval"], x=data.x_test, y=data.y_test)
    np.savez_compressed(paths["sample"], x=data.x_test[:n_sample], y=data.y_test[:n_sample])
    return paths


def conversion_args(which: str, data: Dataset, keras_path: Path, sets: dict[str, Path],
                    out: Path, quantize: str, labels_file: Path) -> list[str]:
    """The edge-convert command line for one reference model."""
    args = [str(keras_path), "--out", str(out), "--quantize", quantize,
            "--calibration", str(sets["calibration"]), "--eval", str(sets["eval"]),
            "--labels", str(labels_file), "--version", "1.0.0", "--threads", "2"]
    if which == "cnn":
        return [*args, "--name", "digits_cnn", "--color", "gray", "--resize", "stretch",
                "--mean", "0", "--std", "255"]
    mean, std = feature_stats(data.x_train)
    # Unrolled: runs under XNNPACK, keeps no state between windows, and does not depend on
    # the optional tf-keras package, so `make models` gives the same graph everywhere.
    return [*args, "--name", "gestures_lstm", "--stride", str(GESTURE_STEPS),
            "--lstm-path", "unrolled",
            "--mean", *map(str, mean), "--std", *map(str, std)]


def prepare(which: str, keras_dir: Path, extra_formats: bool = False
            ) -> tuple[Path, Dataset, dict[str, Path]]:
    """Train and save one model, write its data sets and labels file under ``keras_dir``."""
    keras_path, data = train_and_save(which, keras_dir, extra_formats)
    sets = write_sets(which, data, keras_dir / "data")
    labels = DIGITS_LABELS if which == "cnn" else GESTURE_LABELS
    sets["labels"] = keras_dir / "data" / f"{which}_labels.txt"
    sets["labels"].write_text("\n".join(labels) + "\n")
    return keras_path, data, sets


def build_reference(which: str, out: Path, keras_dir: Path, quantize: str = "auto",
                    convert: bool = True, extra_formats: bool = False) -> int:
    from converter.cli import main as convert_main

    keras_path, data, sets = prepare(which, keras_dir, extra_formats)
    if not convert:
        return 0
    labels_file = sets["labels"]
    code = convert_main(conversion_args(which, data, keras_path, sets, out, quantize,
                                        labels_file))
    if code == 0:
        sample_name = "digits_sample.npz" if which == "cnn" else "gestures_sample.npz"
        out.mkdir(parents=True, exist_ok=True)
        (out / sample_name).write_bytes(sets["sample"].read_bytes())
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.reference",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=("all", "cnn", "lstm"))
    parser.add_argument("--out", type=Path, default=Path("agent/data"))
    parser.add_argument("--keras-out", type=Path, default=Path("models"))
    parser.add_argument("--quantize", default="auto")
    parser.add_argument("--no-convert", action="store_true",
                        help="only train and write the Keras models and data sets")
    parser.add_argument("--extra-formats", action="store_true",
                        help="also save each model as .h5 and as a SavedModel folder")
    args = parser.parse_args(argv)
    targets = ("cnn", "lstm") if args.which == "all" else (args.which,)
    for which in targets:
        code = build_reference(which, args.out, args.keras_out, args.quantize,
                               not args.no_convert, args.extra_formats)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
