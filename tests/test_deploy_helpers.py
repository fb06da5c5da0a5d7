"""Shared helpers for the model store, delivery and deploy tests (no tests here).

Tiny real TFLite models are built once per test session with TensorFlow's converter; an
agent-side ModelReceiver is wired to a real Mosquitto by ``AgentHarness``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.contract import Topics
from agent.inference.engine import DelegateSpec, Engine
from agent.models.receiver import ModelReceiver
from agent.models.store import InstalledModel, ModelStore

LABELS = ["a", "b", "c"]


@functools.cache
def tiny_tflite(side: int = 8, hidden: int = 4) -> bytes:
    """A float32 CNN over ``side``x``side``x1 with 3 classes, converted by TFLite."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((side, side, 1), batch_size=1),
        tf.keras.layers.Conv2D(2, 3, activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(hidden, activation="relu"),
        tf.keras.layers.Dense(len(LABELS), activation="softmax"),
    ])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def manifest_dict(model: bytes, *, name: str = "tiny", version: str = "1",
                  file: str = "tiny.tflite", side: int = 8) -> dict[str, Any]:
    return {
        "schema_version": 1, "name": name, "version": version, "file": file,
        "sha256": hashlib.sha256(model).hexdigest(), "size_bytes": len(model),
        "task": "frame", "quantize": "float32",
        "input": {"shape": [1, side, side, 1], "dtype": "float32", "color": "gray",
                  "resize": "stretch"},
        "output": {"shape": [1, len(LABELS)], "dtype": "float32"},
        "labels": LABELS,
    }


def write_bundle(folder: Path, model: bytes, **kw: Any) -> Path:
    """Write ``<file>`` and ``manifest.json`` into ``folder``; return the manifest path."""
    raw = manifest_dict(model, **kw)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / raw["file"]).write_bytes(model)
    path = folder / "manifest.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


class AgentHarness:
    """A ModelReceiver subscribed to a real broker, as the agent's composition root wires it."""

    def __init__(self, port: int, root: Path, device: str, *, trusted_keys: list[Any],
                 groups: tuple[str, ...] = (), prefix: str = "edge",
                 max_model_bytes: int = 10_000_000, staging_timeout_s: float = 30.0,
                 on_ready: Callable[[InstalledModel, Engine], None] | None = None) -> None:
        self.topics = Topics(prefix, device, groups)
        self.store = ModelStore(root)
        self.store.recover()
        self.results: list[dict[str, Any]] = []
        self.ready: list[tuple[InstalledModel, Engine]] = []
        self._cond = threading.Condition()
        self.receiver = ModelReceiver(
            self.store, self.topics, trusted_keys=trusted_keys, max_model_bytes=max_model_bytes,
            staging_timeout_s=staging_timeout_s, delegate=DelegateSpec(), num_threads=1,
            publish_result=self._publish_result, on_ready=on_ready or self._on_ready)
        self.receiver.start()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"agent-{device}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a, **k: self._subscribed.set()
        self.client.on_message = lambda c, u, msg: self.receiver.handle(msg.topic, msg.payload)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise TimeoutError("harness did not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            return
        client.subscribe([(f, 1) for f in self.receiver.filters()])

    def _publish_result(self, payload: dict[str, Any]) -> None:
        self.client.publish(self.topics.model("result"), json.dumps(payload), qos=1)
        with self._cond:
            self.results.append(payload)
            self._cond.notify_all()

    def _on_ready(self, installed: InstalledModel, engine: Engine) -> None:
        self.ready.append((installed, engine))

    def wait_result(self, push_id: str | None = None, timeout: float = 20.0) -> dict[str, Any]:
        def match() -> dict[str, Any] | None:
            return next((r for r in self.results if push_id in (None, r["push_id"])), None)

        with self._cond:
            if not self._cond.wait_for(lambda: match() is not None, timeout):
                raise TimeoutError(f"no result for push {push_id} after {timeout}s: "
                                   f"{self.results}")
            return match()  # type: ignore[return-value]

    def close(self) -> None:
        self.client.disconnect()  # before loop_stop: the loop then exits at once
        self.client.loop_stop()
        self.receiver.stop()
