"""A real RTSP pusher (PyAV) for capture tests, with OpenCV's FFmpeg listening.

There is no RTSP server here, so the roles are swapped: the agent's ``cv2.VideoCapture``
opens ``rtsp://127.0.0.1:PORT/live`` in FFmpeg's listen mode (``listen_options`` gives the
``OPENCV_FFMPEG_CAPTURE_OPTIONS`` value, read by OpenCV at open time), and ``RtspPusher``
runs a subprocess that connects to it and pushes numbered frames (see
``tests.support.videos``), encoded as MPEG-4 part 2, over RTP interleaved in the RTSP TCP
connection, at a steady rate.

``rtsp_flags;listen`` alone fails with the FFmpeg 8 (libavformat 62) bundled in
opencv-python-headless 5.0: the RTSP demuxer turns its default ``listen_timeout`` of -1 s
into ``-1000`` ms for the TCP layer, which refuses it ("Value -1000.000000 for parameter
'listen_timeout' out of range"), so a positive ``listen_timeout`` (seconds) must be given
too. OpenCV's open timeout (``CAP_PROP_OPEN_TIMEOUT_MSEC``) still bounds the wait.

The pusher is a subprocess (``python -m tests.support.rtsp``) so that PyAV's FFmpeg and
OpenCV's FFmpeg never share a process, and so that a test can stop or kill the "camera".
It retries connecting until the listener is up (connection refused meanwhile).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listen_options(listen_timeout_s: int = 10) -> str:
    """The ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` value that makes OpenCV wait for a pusher."""
    return f"rtsp_flags;listen|listen_timeout;{listen_timeout_s}"


def poke_listener(url: str) -> None:
    """Connect to a listening capture and hang up, so a blocked open fails at once.

    A capture in listen mode waits for a pusher up to its open timeout; a test that stops
    its source calls this to end that wait instead of sitting through it.
    """
    parts = urlsplit(url)
    with contextlib.suppress(OSError), socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 554), timeout=0.5):
        pass


class RtspPusher:
    """Push numbered frames ``first, first + 1, ...`` to ``url`` from a subprocess.

    ``count`` frames (None: until stopped) at ``fps``. ``connected`` is set once the RTSP
    session is up; ``pushed`` counts frames sent (reported by the subprocess every frame).
    ``stop()`` ends the session cleanly (TEARDOWN), ``kill()`` makes it vanish.
    """

    def __init__(self, url: str, *, first: int = 0, count: int | None = None,
                 fps: float = 25.0, width: int = 160, height: int = 120,
                 connect_timeout_s: float = 15.0) -> None:
        self.url = url
        self.first = first
        self.count = count
        self.fps = fps
        self.size = (width, height)
        self.connect_timeout_s = connect_timeout_s
        self.connected = threading.Event()
        self.pushed = 0
        self.lines: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> RtspPusher:
        cmd = [sys.executable, "-m", "tests.support.rtsp", self.url,
               "--first", str(self.first), "--fps", str(self.fps),
               "--width", str(self.size[0]), "--height", str(self.size[1]),
               "--connect-timeout", str(self.connect_timeout_s)]
        if self.count is not None:
            cmd += ["--count", str(self.count)]
        self._proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True, name="rtsp-pusher")
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            if line == "connected":
                self.connected.set()
            elif line.startswith("frame "):
                self.pushed += 1
            else:
                self.lines.append(line)

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        code = self._proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout=2)
        return code

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM: the pusher closes the session (TEARDOWN) and exits; SIGKILL if it hangs."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self.wait(5)

    def __enter__(self) -> RtspPusher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the subprocess -----------------------------------------------------------------------


def _connect(url: str, fps: float, width: int, height: int, deadline: float,
             stopping: threading.Event):  # type: ignore[no-untyped-def]
    import av

    while True:
        out = av.open(url, mode="w", format="rtsp", options={"rtsp_transport": "tcp"})
        stream = out.add_stream("mpeg4", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        try:
            out.start_encoding()  # the RTSP handshake (ANNOUNCE, SETUP, RECORD) happens here
            return out, stream
        except (OSError, av.FFmpegError):
            with contextlib.suppress(Exception):
                out.close()
            if stopping.is_set() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _push(args: argparse.Namespace) -> int:
    import av

    from tests.support.videos import numbered_frame

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        out, stream = _connect(args.url, args.fps, args.width, args.height,
                               time.monotonic() + args.connect_timeout, stopping)
    except Exception as exc:
        print(f"cannot connect: {type(exc).__name__}: {exc}", flush=True)
        return 2
    print("connected", flush=True)
    period = 1.0 / args.fps
    due = time.monotonic()
    i = 0
    try:
        while not stopping.is_set() and (args.count is None or i < args.count):
            img = numbered_frame(args.first + i, args.width, args.height)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
            print(f"frame {args.first + i}", flush=True)
            i += 1
            due += period
            time.sleep(max(0.0, due - time.monotonic()))
        for packet in stream.encode():
            out.mux(packet)
    except (OSError, av.FFmpegError) as exc:  # the listener went away
        print(f"push failed: {type(exc).__name__}: {exc}", flush=True)
        return 1
    finally:
        with contextlib.suppress(Exception):
            out.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Push numbered frames to an RTSP listener.")
    parser.add_argument("url")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--connect-timeout", type=float, default=15.0)
    return _push(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
