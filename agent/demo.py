"""``edge-agent demo``: the agent on bundled digits, labels printed live with running accuracy.

Needs only the agent's install: the converted reference CNN, its manifest and a held-out
sample of digit images are package data (remade by ``make models``). An embedded MQTT broker
(amqtt, MQTT 3.1.1) is started in-process unless ``--broker mqtt://host:port`` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.contract import STATE_STOPPED, StatusField, Topics

DATA = Path(__file__).parent / "data"
DEFAULT_CONFIG = DATA / "demo.yaml"
FRAME_SIZE = 112
DEMO_FPS = 10.0


def write_digits_video(path: Path, fps: float = DEMO_FPS, size: int = FRAME_SIZE) -> list[str]:
    """One frame per held-out digit, upscaled to ``size`` square, as a real MJPG video (the
    demo's camera, and the tests' and benchmarks'); returns the true label of each frame."""
    sample = np.load(DATA / "digits_sample.npz")
    images, truth = sample["x"], sample["y"]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size, size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for img in images:
        big = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        writer.write(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    writer.release()
    return [str(int(y)) for y in truth]


class EmbeddedBroker:
    """amqtt in a thread of its own, on a free loopback port."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._broker: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="broker", daemon=True)

    def _run(self) -> None:
        from amqtt.broker import Broker

        asyncio.set_event_loop(self._loop)
        cfg = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
               "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                           {"allow_anonymous": True}}}

        async def boot() -> None:
            self._broker = Broker(cfg)
            await self._broker.start()

        try:
            self._loop.run_until_complete(boot())
        except BaseException as exc:  # reported to the caller of start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> EmbeddedBroker:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"embedded broker did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._broker is not None:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(3)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(3)


class LabelPrinter:
    """Subscribes to the agent's labels and status and prints them with running accuracy."""

    def __init__(self, host: str, port: int, topics: Topics, truth: list[str]) -> None:
        self.truth = truth
        self.topics = topics
        self.total = 0
        self.correct = 0
        self.latencies: list[float] = []
        self.status: dict[str, Any] = {}
        self.first_label = threading.Event()
        self.stopped = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe([(self.topics.labels, 1), (self.topics.status, 1)])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        if msg.topic == self.topics.status:
            self.status = body
            if body.get(StatusField.STATE) == STATE_STOPPED:
                self.stopped.set()
            return
        self.first_label.set()
        top = body["labels"][0] if body["labels"] else {"label": "-", "score": 0.0}
        truth = self.truth[body["frame_index"] % len(self.truth)]
        self.total += 1
        self.correct += top["label"] == truth
        self.latencies.append(body["capture_to_publish_ms"])
        mark = "ok" if top["label"] == truth else "MISS"
        print(f"seq {body['seq']:5d}  frame {body['frame_index']:4d}  truth {truth}  "
              f"label {top['label']}  score {top['score']:.3f}  {mark:4s}  "
              f"accuracy {self.correct / self.total:6.1%}  "
              f"latency {body['capture_to_publish_ms']:.1f} ms", flush=True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _demo_config(config_path: Path, video: Path, host: str, port: int, state: Path,
                 protocol: str) -> Any:
    from agent.config import parse_config

    raw = yaml.safe_load(config_path.read_text())
    raw.setdefault("mqtt", {}).update({"host": host, "port": port, "protocol": protocol})
    raw["sources"][0]["uri"] = str(video)
    raw["state_dir"] = str(state)
    return parse_config(raw, base_dir=config_path.parent.resolve())


def run_demo(broker: str | None, seconds: float, config_path: Path | None = None) -> int:
    from agent.app import AgentApp

    config_path = config_path or DEFAULT_CONFIG
    embedded = None
    if broker:
        url = urlparse(broker)
        host, port, protocol = url.hostname or "127.0.0.1", url.port or 1883, "5"
    else:
        embedded = EmbeddedBroker().start()
        host, port, protocol = "127.0.0.1", embedded.port, "3.1.1"
        print(f"embedded MQTT broker (amqtt) on {host}:{port}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="edge-demo-") as tmp:
        video = Path(tmp) / "digits.avi"
        truth = write_digits_video(video)
        cfg = _demo_config(config_path, video, host, port, Path(tmp) / "state", protocol)
        app = AgentApp(cfg)
        printer = LabelPrinter(host, port, app.topics, truth)
        started = time.monotonic()
        app.start()
        print(f"agent running: model {app.model.manifest.name} {app.model.manifest.version} "
              f"({app.model.manifest.quantize}), video of {len(truth)} held-out digits at "
              f"{DEMO_FPS:.0f} fps, labels on {app.topics.labels}; Ctrl-C stops")
        stop.wait(seconds)
        app.stop()
        printer.stopped.wait(3)  # the retained 'stopped' status reaches the printer
        printer.close()
        _summary(printer, time.monotonic() - started)
    if embedded:
        embedded.stop()
    return 0 if printer.total else 1


def _summary(printer: LabelPrinter, elapsed: float) -> None:
    lat = sorted(printer.latencies)
    p50 = lat[len(lat) // 2] if lat else float("nan")
    acc = printer.correct / printer.total if printer.total else 0.0
    print(f"\n{printer.total} labels in {elapsed:.1f} s, top-1 accuracy {acc:.1%} "
          f"against the truth, capture-to-publish p50 {p50:.1f} ms; "
          f"final status: {printer.status.get('state', 'unknown')}", file=sys.stdout)
