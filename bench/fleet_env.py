"""What bench/fleet_scale.py runs a fleet on: a Mosquitto sized for it, real edge-agent
processes, a fleet-side subscriber that checks every real agent's labels, the edge-deploy CLI,
and a 600 KB model in two versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.contract import STATE_ONLINE, FleetTopics
from agent.files import sha256_file
from agent.models.signing import KeyPairFiles, generate_keypair
from bench.common import DATA, REPO, mosquitto_binary


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FleetBroker:
    """Mosquitto with the settings a fleet of hundreds needs (see docs/DEPLOY.md)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> FleetBroker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join([
            "user root", f"listener {self.port} 127.0.0.1", "allow_anonymous true",
            "max_connections -1", "max_queued_messages 100000", "max_inflight_messages 20",
            "persistence true", f"persistence_location {self.workdir}/",
            "autosave_interval 300", f"log_dest file {self.workdir}/mosquitto.log",
            "log_type error", "log_type warning", "log_type notice"]) + "\n")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: persistent sessions are saved
            self.proc.wait(30)
        self.proc = None


class Subscriber:
    """The fleet side: counts labels, keeps the real agents' seqs and status times."""

    def __init__(self, port: int, client_id: str) -> None:
        self._lock = threading.Lock()
        self._fleet = FleetTopics("edge")
        self.labels_received = 0
        self.seqs: dict[str, set[int]] = {}
        self.latest_frame: dict[str, float] = {}
        self.frame_ts: dict[str, list[float]] = {}
        self.online: dict[str, list[float]] = {}
        self._agents: set[str] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 2)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(
            [("edge/+/labels", 1), ("edge/+/status", 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        topic = msg.topic
        now = time.time()
        device = self._fleet.device_of(topic, "labels")
        if device is not None:
            with self._lock:
                self.labels_received += 1
                if device in self._agents or device.startswith("agent-"):
                    body = json.loads(msg.payload)
                    self.seqs.setdefault(device, set()).add(int(body["seq"]))
                    self.frame_ts.setdefault(device, []).append(float(body["frame_ts"]))
                    self.latest_frame[device] = max(self.latest_frame.get(device, 0.0),
                                                    float(body["frame_ts"]))
            return
        device = self._fleet.device_of(topic, FleetTopics.STATUS)
        if device is not None and device.startswith("agent-"):
            with self._lock:
                if json.loads(msg.payload).get("state") == STATE_ONLINE:
                    self.online.setdefault(device, []).append(now)

    def mark_agents(self, ids: list[str]) -> None:
        self._agents = set(ids)

    def online_times(self, ids: list[str], since: float) -> list[float]:
        with self._lock:
            return [next(t for t in self.online[d] if t >= since) for d in ids
                    if any(t >= since for t in self.online.get(d, []))]

    def online_count(self, ids: list[str], since: float = 0.0) -> int:
        return len(self.online_times(ids, since))

    def caught_up(self, ids: list[str], since: float) -> bool:
        with self._lock:
            return all(self.latest_frame.get(d, 0.0) >= since for d in ids)

    def missing_seqs(self, ids: list[str]) -> int:
        with self._lock:
            return sum(max(s) - min(s) + 1 - len(s) for d in ids if (s := self.seqs.get(d)))

    def produced_between(self, ids: list[str], t0: float, t1: float) -> int:
        with self._lock:
            return sum(1 for d in ids for ts in self.frame_ts.get(d, []) if t0 <= ts < t1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AgentFleet:
    """``count`` real edge-agent processes at ``fps`` on a small video, group ``sim``."""

    def __init__(self, workdir: Path, port: int, count: int, public_key: Path,
                 video: Path, fps: float = 1.0) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ids = [f"agent-{i:02d}" for i in range(count)]
        self.procs = []
        for device in self.ids:
            raw = {"device": {"id": device, "prefix": "edge", "groups": ["sim"]},
                   "mqtt": {"host": "127.0.0.1", "port": port, "protocol": "3.1.1"},
                   "model": {"manifest": str(DATA / "digits_cnn.json"), "num_threads": 1},
                   "sources": [{"name": "cam", "type": "camera", "uri": str(video),
                                "loop": True, "realtime": True, "target_fps": fps}],
                   "delivery": {"trusted_keys": [str(public_key)]},
                   "state_dir": str(workdir / f"state-{device}"), "log_level": "WARNING"}
            path = workdir / f"{device}.yaml"
            path.write_text(yaml.safe_dump(raw))
            log = open(workdir / f"{device}.log", "wb")  # noqa: SIM115 - the child owns it
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(path)], cwd=REPO,
                stdout=log, stderr=subprocess.STDOUT))

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=1800,
                          env={**os.environ, "EDGE_DEPLOY_STATE_DIR": os.environ.get(
                              "EDGE_DEPLOY_STATE_DIR", str(Path("/tmp") / "fleet-scale"))})


def wide_model(folder: Path, versions: tuple[str, ...]) -> tuple[KeyPairFiles, Path]:
    """A real float32 model over the digits input, about 600 KB (one wide Dense layer), in
    each version (same file, new version), and a key pair to sign it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1), batch_size=1), tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(190, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax")])
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    base = json.loads((DATA / "digits_cnn.json").read_text())
    for version in versions:
        out = folder / version
        out.mkdir(parents=True)
        (out / "digits_wide.tflite").write_bytes(data)
        raw = dict(base, name="digits_wide", version=version, file="digits_wide.tflite",
                   quantize="float32", sha256=sha256_file(out / "digits_wide.tflite"),
                   size_bytes=len(data))
        raw["input"] = dict(base["input"], dtype="float32", quantization=None)
        raw["output"] = dict(base["output"], dtype="float32", quantization=None)
        (out / "manifest.json").write_text(json.dumps(raw))
    return generate_keypair(folder / "keys"), folder
