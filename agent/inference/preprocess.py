"""Manifest-driven preprocessing: resize, colour order, normalise, quantize.

Normalisation and quantization are one affine map per channel, so for 8-bit frames they are
folded into a 256-entry lookup table per channel and applied with ``cv2.LUT`` into a buffer
that is reused across frames. Nothing here is a constant of the code: it all comes from the
manifest's input description.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.errors import FrameError, SampleError
from agent.manifest import InputSpec, WindowSpec

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


class AreaShrink:
    """Exact ``INTER_AREA`` downscale by a large factor, through the integral image.

    OpenCV's general area kernel is a scalar loop over every source pixel (about 0.4 ms
    per channel for 640x480 to 28x28 here); ``cv2.integral`` is vectorised, and an area
    mean is the difference of the integral at the box corners. The integral of a
    piecewise-constant image is bilinear inside each pixel, so fractional box edges are
    exact: the result equals ``cv2.resize(..., INTER_AREA)`` up to rounding. Sampling the
    corners is two ``take``s and two small matrix products, all prepared once per size.
    """

    MIN_FACTOR = 4
    MAX_PIXELS = 128 * 128

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int], channels: int) -> None:
        (sh, sw), (dh, dw) = src_hw, dst_hw
        self.rows, left = _box_weights(sh, dh)
        self.cols, right = _box_weights(sw, dw)
        self.left, self.right = left, right.T.copy()
        depth = cv2.CV_32S if sh * sw * 255 < 2**31 else cv2.CV_64F
        self.depth = depth
        shape = (sh + 1, sw + 1) if channels == 1 else (sh + 1, sw + 1, channels)
        self.integral = np.zeros(shape, np.int32 if depth == cv2.CV_32S else np.float64)
        self.channels = channels

    @classmethod
    def fits(cls, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> bool:
        (sh, sw), (dh, dw) = src_hw, dst_hw
        whole = sh % dh == 0 and sw % dw == 0  # OpenCV has a fast path for whole factors
        return (not whole and dh * cls.MIN_FACTOR <= sh and dw * cls.MIN_FACTOR <= sw
                and dh * dw <= cls.MAX_PIXELS)

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> None:
        cv2.integral(src, self.integral, sdepth=self.depth)
        corners = self.integral.take(self.rows, axis=0).take(self.cols, axis=1)
        corners = corners.astype(np.float64)
        if self.channels == 1:
            means = self.left @ corners @ self.right
        else:
            means = np.einsum("ij,jkc,kl->ilc", self.left, corners, self.right, optimize=True)
        np.rint(means, out=means)
        np.clip(means, 0, 255, out=means)
        dst[...] = means


def _box_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Integral rows (or columns) to read, and the (dst, 2 * (dst + 1)) matrix turning them
    into box means along one axis (linear interpolation of the integral, then differences)."""
    edges = np.arange(dst + 1, dtype=np.float64) * (src / dst)
    lo = np.minimum(np.floor(edges).astype(np.int64), src - 1)
    frac = edges - lo
    n = dst + 1
    interp = np.zeros((n, 2 * n))
    interp[np.arange(n), np.arange(n)] = 1.0 - frac
    interp[np.arange(n), n + np.arange(n)] = frac
    diff = np.zeros((dst, n))
    diff[np.arange(dst), np.arange(dst)] = -1.0
    diff[np.arange(dst), np.arange(dst) + 1] = 1.0
    return np.concatenate([lo, lo + 1]), (diff @ interp) / (src / dst)


class FramePreprocessor:
    """BGR uint8 frame -> model input tensor, with every buffer allocated once.

    Gray models convert the full frame to gray before resizing (one channel to shrink
    instead of three; both steps are linear, so the result is the same up to rounding);
    colour models resize first and reorder the few remaining pixels. Large reductions go
    through ``AreaShrink``.
    """

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
        self._gray_first = spec.color == "gray"
        self._resized = np.zeros((self.height, self.width, 3), np.uint8)
        self._gray = np.zeros((self.height, self.width), np.uint8)
        self._rgb = np.zeros((self.height, self.width, 3), np.uint8)
        self._full_gray: np.ndarray | None = None
        self._shrink_key: tuple[int, ...] = ()
        self._shrink_op: AreaShrink | None = None
        self._out = np.zeros(spec.shape, dtype)
        self._target = self._out.reshape(self.height, self.width, self.channels) \
            if self.channels > 1 else self._out.reshape(self.height, self.width)

    def __call__(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Write the input tensor into ``out`` (the last step writes straight into it) and
        return it; without ``out``, into a reused buffer (copy it to keep it past the next
        call). Not thread-safe: one thread preprocesses with one instance."""
        out = self._out if out is None else out
        target = out.reshape(self._target.shape)
        img = self._check(frame)
        if self.spec.resize == "center_crop":
            img = centre_crop(img, self.width / self.height)
        if self._gray_first:
            self._resize(self._to_gray(img), self._gray)
            pixels = self._gray
        else:
            self._resize(img, self._resized)
            pixels = self._colour()
        if self._lut_is_cv:
            cv2.LUT(pixels, self._lut, dst=target)
        else:
            np.take(self._table[:, 0], pixels, out=target)
        return out

    def decode_plan(self, width: int, height: int) -> tuple[int, bool]:
        """How a JPEG frame of this size may be decoded for this model: the reduction (1, 2,
        4 or 8) that still leaves the part of the frame the model sees at least as large as
        its input (so preprocessing only ever shrinks), and whether luma alone will do."""
        if width <= 0 or height <= 0:
            return 1, False
        seen_w, seen_h, need_w, need_h = float(width), float(height), self.width, self.height
        if self.spec.resize == "center_crop":
            aspect = self.width / self.height
            seen_w, seen_h = min(seen_w, seen_h * aspect), min(seen_h, seen_w / aspect)
        elif self.spec.resize == "letterbox":
            scale = min(self.width / width, self.height / height)
            need_w, need_h = max(1, round(width * scale)), max(1, round(height * scale))
        factor = 1
        for f in (2, 4, 8):
            if seen_w // f >= need_w and seen_h // f >= need_h:
                factor = f
        return factor, self._gray_first

    def _check(self, frame: np.ndarray) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.size == 0:
            raise FrameError("frame must be a non-empty uint8 image")
        if frame.ndim == 2:
            return frame if self._gray_first else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if frame.ndim != 3 or frame.shape[2] not in (3, 4):
            raise FrameError(f"frame shape {frame.shape} is not HxW, HxWx3 or HxWx4")
        return frame[:, :, :3] if frame.shape[2] == 4 else frame

    def _to_gray(self, img: np.ndarray) -> np.ndarray:
        if img.ndim == 2:
            return img
        h, w = img.shape[:2]
        if self._full_gray is None or self._full_gray.shape != (h, w):
            self._full_gray = np.empty((h, w), np.uint8)
        cv2.cvtColor(img, cv2.COLOR_BGR2GRAY, dst=self._full_gray)
        return self._full_gray

    def _resize(self, img: np.ndarray, buffer: np.ndarray) -> None:
        h, w = img.shape[:2]
        if self.spec.resize == "letterbox":
            scale = min(self.width / w, self.height / h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            buffer[...] = 0
            x0, y0 = (self.width - nw) // 2, (self.height - nh) // 2
            self._shrink(img, buffer[y0:y0 + nh, x0:x0 + nw])
        elif (h, w) == (self.height, self.width):
            buffer[...] = img
        else:
            self._shrink(img, buffer)

    def _shrink(self, img: np.ndarray, dst: np.ndarray) -> None:
        (h, w), (nh, nw) = img.shape[:2], dst.shape[:2]
        channels = 1 if img.ndim == 2 else img.shape[2]
        key = (h, w, channels, nh, nw)
        if key != self._shrink_key:  # one source size at a time: nothing grows
            self._shrink_key = key
            self._shrink_op = AreaShrink((h, w), (nh, nw), channels) \
                if AreaShrink.fits((h, w), (nh, nw)) else None
        if self._shrink_op is not None:
            self._shrink_op(img, dst)
            return
        interp = cv2.INTER_AREA if (w > nw or h > nh) else cv2.INTER_LINEAR
        cv2.resize(img, (nw, nh), dst=dst, interpolation=interp)

    def _colour(self) -> np.ndarray:
        if self.spec.color == "rgb":
            cv2.cvtColor(self._resized, cv2.COLOR_BGR2RGB, dst=self._rgb)
            return self._rgb
        return self._resized


def centre_crop(img: np.ndarray, aspect: float) -> np.ndarray:
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

    def __call__(self, window: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
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
        out = self._out if out is None else out
        out[0] = self._work
        return out
