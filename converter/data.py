"""Calibration and evaluation data: an .npz (``x``, optional ``y``) or a folder of images.

Data is kept as the agent would see it (raw pixels, raw sensor values); the input
description (normalisation, colour order, resize mode) turns it into model input,
exactly as the agent's preprocessing does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import ConversionError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp")


@dataclass(frozen=True)
class InputPrep:
    """How raw data becomes model input: the manifest's input description."""

    shape: tuple[int, ...]  # model input without the batch dimension
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    color: str | None = None  # frame models: gray, rgb or bgr
    resize: str | None = None  # frame models: stretch, letterbox or center_crop

    def normalize(self, x: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return ((x.astype(np.float32) - mean) / std).astype(np.float32)


@dataclass(frozen=True)
class DataSet:
    x: np.ndarray  # raw, shape (N, *input shape)
    y: np.ndarray | None
    origin: str


def calibration_subset(data: DataSet, n: int, seed: int = 0) -> DataSet:
    """At most ``n`` samples covering the data: with labels, the classes in turn (as even as
    the data allows), else a seeded random choice; never just the first ``n``."""
    rng = np.random.default_rng(seed)
    if len(data.x) <= n:
        return data
    if data.y is None:
        chosen = np.sort(rng.choice(len(data.x), n, replace=False))
    else:
        pools = [rng.permutation(np.flatnonzero(data.y == c)).tolist()
                 for c in np.unique(data.y)]
        picked: list[int] = []
        while len(picked) < n:
            for pool in pools:
                if pool and len(picked) < n:
                    picked.append(pool.pop())
        chosen = np.asarray(picked)
    return DataSet(data.x[chosen], None if data.y is None else data.y[chosen],
                   f"{data.origin} ({n} of {len(data.x)} samples)")


def check_prep(prep: InputPrep) -> None:
    """Per-channel (or per-feature) mean/std must match the last input dimension."""
    last = prep.shape[-1]
    for name, values in (("mean", prep.mean), ("std", prep.std)):
        if len(values) not in (1, last):
            raise ConversionError(f"--{name} has {len(values)} values; the model input has "
                                  f"{last} channels/features (give 1 or {last})")
    if any(s == 0 for s in prep.std):
        raise ConversionError("--std must not contain 0")


def load_data(path: Path, prep: InputPrep, labels: list[str] | None, what: str) -> DataSet:
    """Load ``path`` (.npz or image folder) and check it fits the model input."""
    if not path.exists():
        raise ConversionError(f"{what} data {path}: not found")
    if path.is_dir():
        if len(prep.shape) != 3:
            raise ConversionError(f"{what} data {path}: an image folder only works for image "
                                  f"models; this model takes sequences {list(prep.shape)}")
        return _load_image_folder(path, prep, labels, what)
    return _load_npz(path, prep, what)


def _load_npz(path: Path, prep: InputPrep, what: str) -> DataSet:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise ConversionError(f"{what} data {path}: no array named 'x' "
                                      f"(found: {', '.join(archive.files) or 'none'})")
            x = np.asarray(archive["x"])
            y = np.asarray(archive["y"]) if "y" in archive.files else None
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"{what} data {path}: not a readable .npz file: "
                              f"{type(exc).__name__}: {exc}") from exc
    x = _fit_shape(x, prep, f"{what} data {path}")
    if y is not None:
        y = y.reshape(-1)
        if len(y) != len(x):
            raise ConversionError(f"{what} data {path}: x has {len(x)} samples but y has "
                                  f"{len(y)}")
        y = y.astype(np.int64)
    return DataSet(x, y, str(path))


def _fit_shape(x: np.ndarray, prep: InputPrep, origin: str) -> np.ndarray:
    expected = tuple(prep.shape)
    if len(expected) == 3 and expected[-1] == 1 and tuple(x.shape[1:]) == expected[:2]:
        x = x[..., None]
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ConversionError(f"{origin}: x has shape {list(x.shape)}, the model expects "
                              f"[N, {', '.join(map(str, expected))}]")
    if len(x) == 0:
        raise ConversionError(f"{origin}: x holds no samples")
    if not np.issubdtype(x.dtype, np.number):
        raise ConversionError(f"{origin}: x has dtype {x.dtype}, expected numbers")
    return x


def _load_image_folder(path: Path, prep: InputPrep, labels: list[str] | None,
                       what: str) -> DataSet:
    """Images directly in ``path`` (no labels) or in one sub-folder per label."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConversionError(f"{what} data {path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images = [read_image(f, prep) for f in files]
    x = np.stack(images)
    y = None
    if labels and all(f.parent != path for f in files):
        unknown = sorted({f.parent.name for f in files} - set(labels))
        if unknown:
            raise ConversionError(f"{what} data {path}: sub-folders {unknown} are not labels")
        y = np.asarray([labels.index(f.parent.name) for f in files], np.int64)
    return DataSet(x, y, str(path))


def read_image(file: Path, prep: InputPrep) -> np.ndarray:
    import cv2

    img = cv2.imread(str(file), cv2.IMREAD_COLOR)
    if img is None:
        raise ConversionError(f"{file}: not a readable image")
    h, w, c = prep.shape
    if prep.color == "gray" or c == 1:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]
    elif prep.color == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return resize_image(img, h, w, prep.resize or "stretch").reshape(h, w, c)


def resize_image(img: np.ndarray, h: int, w: int, mode: str) -> np.ndarray:
    """Resize as the agent does (agent/inference/preprocess.py): crop to the model's aspect for
    ``center_crop``, ``INTER_AREA`` when shrinking, so validation sees what the agent feeds."""
    import cv2

    from agent.inference.preprocess import centre_crop

    if mode == "center_crop":
        img = centre_crop(img, w / h)
    ih, iw = img.shape[:2]
    if mode == "letterbox":
        scale = min(h / ih, w / iw)
        nh, nw = max(1, round(ih * scale)), max(1, round(iw * scale))
        small = cv2.resize(img, (nw, nh), interpolation=_interpolation(ih, iw, nh, nw))
        small = small.reshape(nh, nw, -1)
        canvas = np.zeros((h, w, small.shape[-1]), img.dtype)
        top, left = (h - nh) // 2, (w - nw) // 2
        canvas[top:top + nh, left:left + nw] = small
        return canvas
    return cv2.resize(img, (w, h), interpolation=_interpolation(ih, iw, h, w))


def _interpolation(ih: int, iw: int, h: int, w: int) -> int:
    import cv2

    return cv2.INTER_AREA if (iw > w or ih > h) else cv2.INTER_LINEAR


def load_labels(path: Path, n_outputs: int) -> list[str]:
    """One label a line; the count must match the model's output."""
    if not path.is_file():
        raise ConversionError(f"labels file {path}: not found")
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(labels) != n_outputs:
        raise ConversionError(f"labels file {path}: {len(labels)} labels but the model "
                              f"outputs {n_outputs} classes")
    return labels
