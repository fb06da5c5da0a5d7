"""Shared helpers: machine description, statistics, a real broker, a test video, /proc probes."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "agent" / "data"
PACKAGES = ("ai-edge-litert", "tensorflow-cpu", "keras", "numpy", "opencv-python-headless",
            "paho-mqtt", "matplotlib")


def machine() -> dict[str, Any]:
    """CPU model, cores, Python and package versions, for every report."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    mosq = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True)
    first = (mosq.stdout or mosq.stderr).splitlines()[:1]
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "packages": versions,
            "mosquitto": first[0] if first else "unknown"}


def mosquitto_binary() -> str:
    import shutil

    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else float("nan")


def timed_loop(fn: Any, seconds: float, min_calls: int = 5) -> tuple[int, float]:
    """Call ``fn()`` for about ``seconds``; (calls, elapsed)."""
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while n < min_calls or time.perf_counter() < deadline:
        fn()
        n += 1
    return n, time.perf_counter() - t0


@contextlib.contextmanager
def broker(workdir: Path | None = None) -> Iterator[Any]:
    """A real Mosquitto on a free loopback port (the test suite's helper)."""
    sys.path.insert(0, str(REPO))
    from bench.support.broker import Mosquitto

    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-mq-")))
        mq = Mosquitto(workdir, persistence=False).start()
        try:
            yield mq
        finally:
            mq.stop()


def scene_frame(i: int, width: int = 640, height: int = 480) -> np.ndarray:
    """A camera-like BGR frame: gradient background, texture, a moving digit and shapes."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(1, height - 1)).astype(np.uint8)
    img[..., 2] = ((xx + yy + 7 * i) % 256).astype(np.uint8)
    rng = np.random.default_rng(i)
    img = cv2.add(img, rng.integers(0, 24, img.shape, dtype=np.uint8))
    cx, cy = 120 + (i * 9) % (width - 240), 120 + (i * 5) % (height - 240)
    cv2.circle(img, (cx, cy), 60, (30, 200, 240), -1)
    cv2.rectangle(img, (width - cx - 80, height - cy - 60), (width - cx, height - cy),
                  (200, 40, 90), -1)
    cv2.putText(img, str(i % 10), (width // 2 - 80, height // 2 + 80),
                cv2.FONT_HERSHEY_SIMPLEX, 7, (255, 255, 255), 18)
    return img


def make_video(path: Path, frames: int = 150, width: int = 640, height: int = 480,
               fps: float = 30.0) -> Path:
    """An MJPG .avi of ``frames`` scene frames (reused when it already exists)."""
    if path.exists() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {tmp}")
    try:
        for i in range(frames):
            writer.write(scene_frame(i, width, height))
    finally:
        writer.release()
    os.replace(tmp, path)
    return path


def decoded_frames(video: Path, limit: int = 64) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    out = []
    while len(out) < limit:
        ok, img = cap.read()
        if not ok:
            break
        out.append(img)
    cap.release()
    return out


def proc_rss_mb(pid: int) -> float:
    """VmRSS of a process in MiB (nan once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def venv_python() -> str:
    return sys.executable


def fmt(v: float | None, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return format(v, spec)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """Cores used during a phase: by the processes we own, and by everything else.

    Other sessions share this machine; the 'foreign' figure says how much of it they used
    while we measured (``start`` / ``stop`` around the phase).
    """

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = [os.getpid(), *pids]
        self.ours = self.foreign = float("nan")

    def start(self) -> LoadMeter:
        self._t0 = time.monotonic()
        self._busy0 = _machine_busy_seconds()
        self._ours0 = sum(_cpu_seconds(p) for p in self.pids)
        return self

    def stop(self) -> dict[str, float]:
        dt = max(time.monotonic() - self._t0, 1e-6)
        ours = (sum(_cpu_seconds(p) for p in self.pids) - self._ours0) / dt
        busy = (_machine_busy_seconds() - self._busy0) / dt
        self.ours, self.foreign = ours, max(0.0, busy - ours)
        return {"our_cores": ours, "foreign_cores": self.foreign}
