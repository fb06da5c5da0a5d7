"""Shared helpers for the model store, delivery and deploy tests and the push benchmark.

Tiny real TFLite models are built once per test session with TensorFlow's converter.
``AgentHarness`` runs the real agent (``AgentApp``: its MQTT port, receiver, model switch and
pipeline, a real video as its camera) against a real Mosquitto, and watches its results over
MQTT the way ``edge-deploy`` does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from agent.app import AgentApp
from agent.config import parse_config
from agent.contract import Topics
from agent.demo import write_digits_video
from agent.models.loader import EngineFactory
from agent.models.store import ModelStore
from agent.models.wire import Target, commit_message, encode_chunk, manifest_message, signed_body
from bench.support.mqtt_client import Collector
from deploy.broker import MqttSession

LABELS = ["a", "b", "c"]
SEED_VERSION = "0"


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
    """The real agent for one device: it starts serving the tiny model (version ``0``) on a
    looping digits video, and its ``<base>/model/result`` messages are collected over MQTT."""

    def __init__(self, port: int, root: Path, device: str, *, trusted_keys: list[Any],
                 groups: tuple[str, ...] = (), prefix: str = "edge",
                 max_model_bytes: int = 10_000_000, staging_timeout_s: float = 30.0,
                 engine_factory: EngineFactory | None = None,
                 seed: Path | None = None, runtime: str = "auto") -> None:
        root.mkdir(parents=True, exist_ok=True)
        video = root / "digits.avi"
        write_digits_video(video, fps=30, size=32)
        manifest = seed or write_bundle(root / "seed", tiny_tflite(), version=SEED_VERSION)
        self.topics = Topics(prefix, device, groups)
        self.cfg = parse_config({
            "device": {"id": device, "prefix": prefix, "groups": list(groups)},
            "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 5,
                     "reconnect_min_s": 0.1, "reconnect_max_s": 1.0},
            "model": {"manifest": str(manifest), "num_threads": 1, "runtime": runtime},
            "sources": [{"name": "cam", "type": "camera", "uri": str(video), "loop": True,
                         "realtime": True}],
            "delivery": {"trusted_keys": [str(k) for k in trusted_keys],
                         "max_model_bytes": max_model_bytes,
                         "staging_timeout_s": staging_timeout_s},
            "state_dir": str(root / "state"),
        })
        self.watch = Collector(port, [self.topics.model("result"), self.topics.status,
                                      f"{self.topics.base}/cmd/+/result"])
        self.app = AgentApp(self.cfg, engine_factory=engine_factory)
        self.app.start()
        self.watch.wait_topic(self.topics.status, timeout=20)  # subscribed before it is sent
        # The status seen may be the retained one of an earlier harness on this device: wait
        # for this agent's own (its PUBACK comes after the SUBACK of its model topics).
        if not self.app.port.wait_connected(20):
            raise RuntimeError("the agent did not connect to the broker")

    @property
    def store(self) -> ModelStore:
        return self.app.store

    @property
    def results(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.watch.on_topic(self.topics.model("result"))]

    def serving(self) -> tuple[str, str]:
        """Name and version of the model the inference thread uses now."""
        m = self.app.pipeline.model.manifest
        return m.name, m.version

    def wait_result(self, push_id: str | None = None, timeout: float = 20.0,
                    result: str | None = None) -> dict[str, Any]:
        def match(r: dict[str, Any]) -> bool:
            return r.get("push_id") == push_id and result in (None, r.get("result"))

        self.watch.wait_for(lambda ms: any(match(r) for r in self.results), timeout,
                            what=f"result of push {push_id}")
        return next(r for r in self.results if match(r))

    def command(self, name: str, body: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        """Send ``<base>/cmd/<name>`` and return the agent's reply."""
        rid = f"{name}-{len(self.watch.messages)}"
        topic = self.topics.cmd_result(name)
        self.watch.publish(self.topics.cmd(name), json.dumps({"id": rid, **body}))
        self.watch.wait_for(lambda ms: any(m.topic == topic and m.json().get("id") == rid
                                           for m in ms), timeout, what=f"reply to {name}")
        return next(m.json() for m in self.watch.on_topic(topic) if m.json().get("id") == rid)

    def close(self) -> None:
        self.app.stop()
        self.watch.close()


def offer_message(push_id: str, raw: dict[str, Any], key: Any, *, chunk_size: int = 1000,
                  target: Target | None = None, expires_in_s: float = 600.0,
                  rollback: bool = False, **override: Any) -> bytes:
    """A signed manifest message; ``override`` replaces fields after signing (``signature``)."""
    body = signed_body(push_id, raw, target or Target(devices=("dev1",)),
                       time.time() + expires_in_s, chunk_size, rollback)
    message = json.loads(manifest_message(body, key))
    message.update(override)
    return json.dumps(message).encode()


def raw_push(session: MqttSession, base: str, push_id: str, manifest: bytes | None,
             model: bytes, chunk_size: int = 1000, commit: bool = True) -> None:
    """Publish a manifest message as given, the chunks and the commit, without the checks
    ``send_push`` makes on the sender's side."""
    mids = set()
    if manifest is not None:
        mids.add(session.publish(f"{base}/manifest", manifest))
    for i, off in enumerate(range(0, len(model), chunk_size)):
        mids.add(session.publish(f"{base}/chunk",
                                 encode_chunk(push_id, i, model[off:off + chunk_size])))
    if commit:
        mids.add(session.publish(f"{base}/commit", commit_message(push_id)))
    session.wait_acked(mids, 10)
