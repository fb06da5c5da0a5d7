"""systemd notify protocol against a datagram socket bound by the test: READY after the first
inference, WATCHDOG only while the pipeline makes progress, STOPPING at the end."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.app import AgentApp
from agent.config import load_config
from agent.demo import write_digits_video
from agent.health import SystemdNotifier
from bench.support.agent_proc import DATA, agent_config
from bench.support.broker import Mosquitto

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")


class HangingBackend:
    """Answers ``ok_calls`` invokes, then blocks like a hung interpreter or delegate."""

    def __init__(self, ok_calls: int) -> None:
        self.ok_calls = ok_calls
        self.calls = 0
        self.release = threading.Event()

    def invoke(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls > self.ok_calls:
            self.release.wait()
        out = np.zeros((1, 10), np.float32)
        out[0, 1] = 1.0
        return out

    def reset_state(self) -> None:
        pass


def read_until(sock: socket.socket, wanted: bytes, deadline_s: float) -> list[bytes]:
    seen: list[bytes] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            msg = sock.recv(4096)
        except TimeoutError:
            continue
        seen.append(msg)
        if wanted in msg:
            return seen
    raise AssertionError(f"{wanted!r} not received; got {seen[-5:]}")


def test_watchdog_stops_when_inference_hangs(tmp_path: Path, mosquitto: Mosquitto) -> None:
    video = tmp_path / "d.avi"
    write_digits_video(video, fps=30)
    cfg = load_config(agent_config(tmp_path, mosquitto.port, [
        {"name": "cam", "type": "camera", "uri": str(video), "loop": True, "realtime": True}],
        health={"stall_s": 0.6}))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    backend = HangingBackend(ok_calls=40)
    app = AgentApp(cfg, engine_factory=lambda path, manifest: backend,
                   notifier=SystemdNotifier(str(tmp_path / "notify")), watchdog_s=0.1)
    app.start()
    try:
        read_until(sock, b"READY=1", 10)
        read_until(sock, b"WATCHDOG=1", 5)
        read_until(sock, b"STATUS=stalled", 15)  # the backend hung after 40 frames
        quiet_from = time.monotonic()
        later = []
        while time.monotonic() - quiet_from < 1.0:
            with contextlib.suppress(TimeoutError):
                later.append(sock.recv(4096))
        assert later and all(b"WATCHDOG=1" not in m for m in later), later
        backend.release.set()
        read_until(sock, b"WATCHDOG=1", 5)  # progress again: pings resume
    finally:
        backend.release.set()
        app.stop()
    read_until(sock, b"STOPPING=1", 3)
    sock.close()
