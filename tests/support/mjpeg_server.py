"""A real HTTP MJPEG server (``multipart/x-mixed-replace``) on a free loopback port.

It streams JPEG parts at a given rate and can misbehave on request, the way field
cameras do: ``stall()`` holds every connection open and sends nothing,
``drop()`` closes the open connections (the server keeps listening),
``go_away()`` closes the listening socket too (connections are refused) and
``come_back()`` listens again on the same port; ``corrupt_next(n)`` sends ``n``
parts that are not valid JPEG.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = "frame"
# A JPEG start-of-image marker followed by bytes no decoder can use.
CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        generation = owner._generation
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        owner._connections += 1
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
            owner._stream(self, generation)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: MjpegServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


class MjpegServer:
    """Serve ``frames`` (BGR images, cycled) as an MJPEG stream at ``fps``."""

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 30.0,
                 host: str = "127.0.0.1", port: int = 0, quality: int = 85) -> None:
        if not frames:
            raise ValueError("MjpegServer needs at least one frame")
        self._jpegs = [_encode(f, quality) for f in frames]
        self.fps = fps
        self.host = host
        self.port = port
        self._generation = 0
        self._connections = 0
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._corrupt_pending = 0
        self.frames_sent = 0
        self.corrupt_sent = 0
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> MjpegServer:
        self._http = _HttpServer((self.host, self.port), self)
        self.port = self._http.server_address[1]
        self._running.set()
        self._thread = threading.Thread(target=self._http.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"mjpeg-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.go_away()

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/stream.mjpg"

    @property
    def connections(self) -> int:
        """How many GET requests were answered (a client reconnecting adds one)."""
        return self._connections

    # -- misbehaviour -----------------------------------------------------------

    def stall(self) -> None:
        """Keep every connection open but send nothing until ``resume()``."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def drop(self) -> None:
        """Close the open connections; new ones are accepted."""
        with self._lock:
            self._generation += 1
        self._flowing.set()

    def go_away(self) -> None:
        """Close the connections and the listening socket: clients get refused."""
        self._running.clear()
        self.drop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def come_back(self) -> None:
        """Listen again on the same port after ``go_away()``."""
        self.start()

    def corrupt_next(self, n: int = 1) -> None:
        with self._lock:
            self._corrupt_pending += n

    # -- streaming --------------------------------------------------------------

    def _next_part(self) -> bytes:
        with self._lock:
            if self._corrupt_pending:
                self._corrupt_pending -= 1
                self.corrupt_sent += 1
                return CORRUPT_JPEG
            jpeg = self._jpegs[self.frames_sent % len(self._jpegs)]
            self.frames_sent += 1
            return jpeg

    def _alive(self, generation: int) -> bool:
        return self._running.is_set() and generation == self._generation

    def _stream(self, handler: _Handler, generation: int) -> None:
        period = 1.0 / self.fps
        due = time.monotonic()
        while self._alive(generation):
            if not self._flowing.is_set():
                self._flowing.wait(0.05)
                due = time.monotonic()
                continue
            body = self._next_part()
            head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            handler.wfile.write(head + body + b"\r\n")
            handler.wfile.flush()
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                due = time.monotonic()


def _encode(frame: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cv2.imencode failed")
    return buf.tobytes()
