"""The reference models' data and training, deterministic: seeds, op determinism, threads.

``make models`` must reproduce the committed figures, so every training run fixes
what TensorFlow would otherwise pick per machine or per run: the Python, NumPy and
TensorFlow seeds, deterministic kernels (``enable_op_determinism``), the thread pools
(a fixed size, whatever the core count) and oneDNN's kernels (off: their blocking
depends on the CPU). ``prepare_determinism`` must run before TensorFlow is imported.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

SEED = 1234
TRAIN_THREADS = 2
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


def prepare_determinism(seed: int = SEED) -> None:
    """Environment settings TensorFlow reads at import time."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
    os.environ["TF_DETERMINISTIC_OPS"] = "1"


def seed_everything(seed: int = SEED, threads: int = TRAIN_THREADS) -> None:
    """Seeds, deterministic ops and fixed thread pools; call before building the model."""
    prepare_determinism(seed)
    import keras
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process: keep what it has
        pass
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def keras_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


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


def train_cnn(data: Dataset, epochs: int = 20, seed: int = SEED) -> Any:
    seed_everything(seed)
    model = build_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x = data.x_train[..., None].astype(np.float32) / 255.0
    model.fit(x, data.y_train, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    return model


def train_lstm(data: Dataset, epochs: int = 20, seed: int = SEED) -> Any:
    seed_everything(seed)
    mean, std = feature_stats(data.x_train)
    model = build_lstm()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x = (data.x_train - np.float32(mean)) / np.float32(std)
    model.fit(x, data.y_train, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    return model
