"""Run ``edge-agent run`` as a child process against a real broker and read what it publishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import REPO

DEVICE = "bench"
BASE = f"edge/{DEVICE}"


@dataclass(frozen=True)
class AgentSetup:
    """What one agent run looks like; becomes its YAML config."""

    manifest: Path
    video: Path
    realtime: bool = False
    num_threads: int = 2
    outbox: bool = True
    qos: int = 1
    stats_interval_s: float = 1.0
    target_fps: float | None = None
    max_frame_age_ms: int = 1000
    cameras: int = 1
    """Sources reading the same file (``cam``, or ``cam0``..``camN-1`` when more than one)."""

    def source_names(self) -> list[str]:
        return ["cam"] if self.cameras == 1 else [f"cam{i}" for i in range(self.cameras)]

    def config(self, workdir: Path, port: int) -> Path:
        raw: dict[str, Any] = {
            "device": {"id": DEVICE, "prefix": "edge"},
            "mqtt": {"host": "127.0.0.1", "port": port, "qos": self.qos, "keepalive_s": 10},
            "outbox": {"enabled": self.outbox},
            "model": {"manifest": str(self.manifest.resolve()),
                      "num_threads": self.num_threads},
            "sources": [{"type": "camera", "name": name, "uri": str(self.video.resolve()),
                         "loop": True, "realtime": self.realtime,
                         "target_fps": self.target_fps} for name in self.source_names()],
            "pipeline": {"max_frame_age_ms": self.max_frame_age_ms},
            "publish": {"stats_interval_s": self.stats_interval_s},
            "state_dir": str(workdir / "state"),
            "log_level": "WARNING",
        }
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "agent.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path


@dataclass
class Subscriber:
    """Counts labels, keeps stats/status bodies and (optionally) label bodies with arrival."""

    port: int
    keep_labels: bool = False
    labels: int = 0
    first_label_at: float | None = None
    label_bodies: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a, **k: ready.set()
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self.client.subscribe([(f"{BASE}/labels", 1), (f"{BASE}/stats", 0)])
        if not ready.wait(5):
            raise TimeoutError("bench subscriber did not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        with self._cond:
            if msg.topic.endswith("/labels"):
                self.labels += 1
                if self.first_label_at is None:
                    self.first_label_at = now
                if self.keep_labels:
                    self.label_bodies.append((now, json.loads(msg.payload)))
            elif not msg.retain:
                self.stats.append(json.loads(msg.payload))
            self._cond.notify_all()

    def wait_labels(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.labels < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def wait_stats(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.stats) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class AgentProcess:
    """``python -m agent.cli run`` (what the ``edge-agent`` script runs) as a child."""

    def __init__(self, config: Path, extra_env: dict[str, str] | None = None,
                 prelude: str | None = None) -> None:
        self.log_path = config.with_suffix(".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.proc = subprocess.Popen([*agent_command(prelude), "run", "--config",
                                      str(config)], cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def agent_command(prelude: str | None = None) -> list[str]:
    """``python -m agent.cli``; with a prelude, the same entry point after running that code
    (to measure a process-wide setting, e.g. ``cv2.setNumThreads(1)``, without editing the
    agent)."""
    if not prelude:
        return [sys.executable, "-m", "agent.cli"]
    code = f"{prelude}\nimport sys\nfrom agent.cli import main\nsys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code]


def fps_window(stats: list[dict[str, Any]], skip: int = 2) -> dict[str, float]:
    """Inferences/s and frames in/s between the first kept and the last stats record."""
    kept = stats[skip:]
    if len(kept) < 2:
        raise RuntimeError(f"need at least {skip + 2} stats records, got {len(stats)}")
    a, b = kept[0], kept[-1]
    dt = b["ts"] - a["ts"]
    return {"fps_out": (b["inferences"] - a["inferences"]) / dt,
            "fps_in": (b["frames_in"] - a["frames_in"]) / dt,
            "seconds": dt, "outbox_depth": float(b.get("outbox_depth") or 0),
            "rss_mb": float(b.get("rss_mb") or 0)}
