"""Manifest-driven preprocessing: resize, colour order, normalise, quantize.

Normalisation and quantization are one affine map per channel, so for 8-bit frames they are
folded into a 256-entry lookup table per channel and applied with ``cv2.LUT`` into a buffer
that is reused across frames. Nothing here is a constant of the code: it all comes from the
manifest's input description.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.contract import InputSpec, WindowSpec
from agent.errors import FrameError, SampleError

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8,
              "uint8": np.uint8, "int16": np.int16, "int32": np.int32}
_INT_RANGES = {np.int8: (-128, 127), np.uint8: (0, 255), np.int16: (-32768, 32767),
               np.int32: (-(2**31), 2**31 - 1)}


def _per_channel(values: list[float], channels: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 1:
        return np.repeat(arr, channels)
    if arr.size != channels:
        raise FrameError(f"normalization.{what} has {arr.size} values for {channels} channels")
    return arr


def value_table(spec: InputSpec, channels: int) -> np.ndarray:
    """Map each 8-bit pixel value of each channel to the model's input value: (256, channels)."""
    mean = _per_channel(spec.normalization.mean, channels, "mean")
    std = _per_channel(spec.normalization.std, channels, "std")
    pixels = np.arange(256, dtype=np.float64)[:, None]
    real = (pixels - mean[None, :]) / std[None, :]
    dtype = _NP_DTYPES[spec.dtype]
    if spec.quantization is not None and dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[dtype]
        q = np.rint(real / spec.quantization.scale + spec.quantization.zero_point)
        return np.clip(q, lo, hi).astype(dtype)
    return real.astype(dtype)


class FramePreprocessor:
    """BGR uint8 frame -> model input tensor, with every buffer allocated once."""

    def __init__(self, spec: InputSpec) -> None:
        if spec.color is None or spec.resize is None:
            raise FrameError("the manifest's input needs color and resize for frames")
        self.spec = spec
        self.height, self.width = spec.shape[1], spec.shape[2]
        self.channels = spec.shape[3]
        if (spec.color == "gray") != (self.channels == 1):
            raise FrameError(f"input color {spec.color!r} does not fit {self.channels} channels")
        self._table = value_table(spec, self.channels)
        dtype = self._table.dtype
        self._lut = self._table.reshape(1, 256, self.channels) if self.channels > 1 \
            else self._table.reshape(1, 256)
        self._lut_is_cv = dtype in (np.uint8, np.int8, np.int16, np.float32)
        self._resized = np.zeros((self.height, self.width, 3), np.uint8)
        self._gray = np.zeros((self.height, self.width), np.uint8)
        self._rgb = np.zeros((self.height, self.width, 3), np.uint8)
        self._out = np.zeros(spec.shape, dtype)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Return the input tensor (a reused buffer: copy it if you keep it past the next call)."""
        img = self._check(frame)
        self._resize(img)
        pixels = self._colour()
        target = self._out.reshape(self.height, self.width, self.channels) \
            if self.channels > 1 else self._out.reshape(self.height, self.width)
        if self._lut_is_cv:
            cv2.LUT(pixels, self._lut, dst=target)
        else:
            np.take(self._table[:, 0], pixels, out=target)
        return self._out

    def _check(self, frame: np.ndarray) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.size == 0:
            raise FrameError("frame must be a non-empty uint8 image")
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if frame.ndim != 3 or frame.shape[2] not in (3, 4):
            raise FrameError(f"frame shape {frame.shape} is not HxW, HxWx3 or HxWx4")
        return frame[:, :, :3] if frame.shape[2] == 4 else frame

    def _resize(self, img: np.ndarray) -> None:
        h, w = img.shape[:2]
        mode = self.spec.resize
        if mode == "center_crop":
            img = _centre_crop(img, self.width / self.height)
            h, w = img.shape[:2]
        interp = cv2.INTER_AREA if (w > self.width or h > self.height) else cv2.INTER_LINEAR
        if mode == "letterbox":
            scale = min(self.width / w, self.height / h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            self._resized[...] = 0
            x0, y0 = (self.width - nw) // 2, (self.height - nh) // 2
            cv2.resize(img, (nw, nh), dst=self._resized[y0:y0 + nh, x0:x0 + nw],
                       interpolation=interp)
        elif (h, w) == (self.height, self.width):
            self._resized[...] = img
        else:
            cv2.resize(img, (self.width, self.height), dst=self._resized, interpolation=interp)

    def _colour(self) -> np.ndarray:
        if self.spec.color == "gray":
            cv2.cvtColor(self._resized, cv2.COLOR_BGR2GRAY, dst=self._gray)
            return self._gray
        if self.spec.color == "rgb":
            cv2.cvtColor(self._resized, cv2.COLOR_BGR2RGB, dst=self._rgb)
            return self._rgb
        return self._resized


def _centre_crop(img: np.ndarray, aspect: float) -> np.ndarray:
    h, w = img.shape[:2]
    if w / h > aspect:
        cw = max(1, round(h * aspect))
        x0 = (w - cw) // 2
        return img[:, x0:x0 + cw]
    ch = max(1, round(w / aspect))
    y0 = (h - ch) // 2
    return img[y0:y0 + ch, :]


class WindowPreprocessor:
    """(length, features) float32 window -> model input tensor."""

    def __init__(self, spec: InputSpec, window: WindowSpec) -> None:
        self.spec = spec
        self.window = window
        self._mean = _per_channel(spec.normalization.mean, window.features, "mean") \
            .astype(np.float32)
        self._inv_std = (1.0 / _per_channel(spec.normalization.std, window.features, "std")) \
            .astype(np.float32)
        self._dtype = _NP_DTYPES[spec.dtype]
        self._work = np.zeros((window.length, window.features), np.float32)
        self._out = np.zeros(spec.shape, self._dtype)

    def __call__(self, window: np.ndarray) -> np.ndarray:
        if window.shape != (self.window.length, self.window.features):
            raise SampleError(f"window shape {window.shape} != "
                              f"({self.window.length}, {self.window.features})")
        np.subtract(window, self._mean, out=self._work)
        np.multiply(self._work, self._inv_std, out=self._work)
        q = self.spec.quantization
        if q is not None and self._dtype in _INT_RANGES:
            lo, hi = _INT_RANGES[self._dtype]
            np.multiply(self._work, 1.0 / q.scale, out=self._work)
            np.add(self._work, q.zero_point, out=self._work)
            np.rint(self._work, out=self._work)
            np.clip(self._work, lo, hi, out=self._work)
        self._out[0] = self._work
        return self._out
