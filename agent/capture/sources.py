"""What a camera source is and how OpenCV opens it.

``CameraOptions`` describes one source (device, file or network stream) and validates
itself; ``open_capture`` turns it into an opened ``cv2.VideoCapture`` (or whatever a test
injects through ``capture_factory``). The capture loop lives in ``agent/capture/camera.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from agent.errors import SourceError

SourceKind = Literal["device", "file", "stream"]
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CREDENTIALS = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/@]*)@")


class VideoCaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` the capture loop uses (a test fake implements it)."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def grab(self) -> bool: ...
    def set(self, prop: int, value: float) -> bool: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


CaptureFactory = Callable[[str | int, int, Sequence[int]], VideoCaptureLike]


def default_capture_factory(target: str | int, api: int, params: Sequence[int]) -> Any:
    if params:
        return cv2.VideoCapture(target, api, list(params))
    return cv2.VideoCapture(target, api)


@dataclass(frozen=True, repr=False)
class CameraOptions:
    """One camera source. Field names match ``agent.config.CameraSourceConfig``.

    ``uri``: an int or digit string (V4L2 index), ``/dev/videoN``, a video file path, or an
    ``rtsp://`` / ``http(s)://`` (MJPEG) URL. ``loop`` and ``realtime`` apply to files;
    ``target_fps`` drops frames (by wall clock) to at most that rate; ``width``, ``height`` and
    ``fourcc`` are requested from a device.
    """

    name: str
    uri: str | int
    loop: bool = False
    realtime: bool = False
    target_fps: float | None = None
    open_timeout_ms: int = 5000
    read_timeout_ms: int = 5000
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    width: int | None = None
    height: int | None = None
    fourcc: str | None = None
    ffmpeg_options: str | None = None  # e.g. "rtsp_transport;tcp" (files and URLs only)

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise SourceError(f"camera source {self.name!r}: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if not self.name:
            problems.append("name must not be empty")
        try:
            source_kind(self.uri)
        except SourceError as exc:
            problems.append(str(exc))
        if self.target_fps is not None and not self.target_fps > 0:
            problems.append(f"target_fps must be > 0, got {self.target_fps}")
        for key in ("open_timeout_ms", "read_timeout_ms"):
            if getattr(self, key) <= 0:
                problems.append(f"{key} must be > 0, got {getattr(self, key)}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            problems.append(f"need 0 < reconnect_min_s <= reconnect_max_s, got "
                            f"{self.reconnect_min_s} and {self.reconnect_max_s}")
        for key in ("width", "height"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                problems.append(f"{key} must be > 0, got {value}")
        if self.fourcc is not None and len(self.fourcc) != 4:
            problems.append(f"fourcc must be 4 characters, got {self.fourcc!r}")
        return problems

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "uri")
        return f"CameraOptions(uri={self.display_uri!r}, {fields})"

    @property
    def kind(self) -> SourceKind:
        return source_kind(self.uri)

    @property
    def display_uri(self) -> str:
        """The URI with any password masked, for logs and status reasons."""
        return redact_uri(self.uri)


def source_kind(uri: str | int) -> SourceKind:
    """Classify a URI; raise ``SourceError`` for one no backend here can open."""
    if isinstance(uri, bool):
        raise SourceError(f"uri must be a string or a device index, got {uri!r}")
    if isinstance(uri, int):
        if uri < 0:
            raise SourceError(f"device index must be >= 0, got {uri}")
        return "device"
    if not isinstance(uri, str) or not uri.strip():
        raise SourceError(f"uri must be a non-empty string or a device index, got {uri!r}")
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "device"
    match = _SCHEME.match(uri)
    if match:
        scheme = match.group(1).lower()
        if scheme not in STREAM_SCHEMES:
            raise SourceError(f"unsupported URL scheme {scheme!r} in {redact_uri(uri)!r} "
                              f"(use one of {', '.join(STREAM_SCHEMES)} or a file path)")
        return "stream"
    return "file"


def redact_uri(uri: str | int) -> str:
    if isinstance(uri, int):
        return str(uri)
    match = _CREDENTIALS.match(uri)
    if not match:
        return uri
    user = match.group(2).split(":", 1)[0]
    return f"{match.group(1)}{user}:***@{uri[match.end():]}"


def open_capture(opts: CameraOptions, factory: CaptureFactory | None = None) -> VideoCaptureLike:
    """Open the source or raise ``SourceError`` naming why.

    Files and URLs go through FFmpeg with open and read timeouts passed at open (a stalled
    stream otherwise blocks ``read()`` for 30 s). Devices go through V4L2 with no open
    parameters, because a backend refuses to open when given parameters it does not
    support, and the timeouts are documented for FFmpeg and GStreamer only; the read
    timeout is then requested with ``set`` (best effort), and V4L2 falls back on its own
    select() timeout.
    """
    factory = factory or default_capture_factory
    kind = opts.kind
    if kind == "device":
        target: str | int = int(opts.uri) if str(opts.uri).isdigit() else str(opts.uri)
        api, params = cv2.CAP_V4L2, []
    else:
        target, api = str(opts.uri), cv2.CAP_FFMPEG
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, opts.open_timeout_ms,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, opts.read_timeout_ms]
    try:
        with _ffmpeg_options(opts.ffmpeg_options if kind != "device" else None):
            cap = factory(target, api, params)
    except cv2.error as exc:
        raise SourceError(f"cannot open {kind} {opts.display_uri}: {exc}") from exc
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open {kind} {opts.display_uri}"
                          + (" (no such file)" if kind == "file" and _missing(target) else ""))
    if kind == "device":
        _configure_device(cap, opts)
    return cap


_FFMPEG_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_FFMPEG_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _ffmpeg_options(options: str | None) -> Iterator[None]:
    """Per-source FFmpeg options (``key;value|key;value``, e.g. ``rtsp_transport;tcp``).

    OpenCV reads them from one process-wide environment variable when a capture opens, so
    it is set under a lock around the open and restored afterwards.
    """
    if not options:
        yield
        return
    with _FFMPEG_ENV_LOCK:
        before = os.environ.get(_FFMPEG_ENV)
        os.environ[_FFMPEG_ENV] = options
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(_FFMPEG_ENV, None)
            else:
                os.environ[_FFMPEG_ENV] = before


def _configure_device(cap: VideoCaptureLike, opts: CameraOptions) -> None:
    """Request format and size (fourcc first: V4L2 picks sizes per pixel format)."""
    if opts.fourcc:
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*opts.fourcc))
    if opts.width:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, opts.width)
    if opts.height:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, opts.height)
    cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, opts.read_timeout_ms)


def _missing(path: str | int) -> bool:
    return isinstance(path, str) and not os.path.exists(path)
