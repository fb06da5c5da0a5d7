"""The one loader and the model switch in a real agent (issue 9): a pushed model uses the
configured runtime, ``ok`` is sent only once the new model serves, ``model rollback`` runs the
same checks as a push, and an automatic rollback keeps what ``config set`` chose."""

from __future__ import annotations

import functools
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.inference.engine import Engine
from agent.manifest import ModelManifest
from bench.support.broker import Mosquitto
from bench.support.deploy_helpers import (
    LABELS,
    AgentHarness,
    manifest_dict,
    offer_message,
    raw_push,
    tiny_tflite,
    write_bundle,
)

BASE = "edge/dev1/model"


@functools.cache
def tiny_with(op: str) -> bytes:
    """The tiny CNN's shape with a first layer that makes NaN: ``zero`` on a zero input
    (0/0), ``frames`` on any positive pixel (sqrt of a negative)."""
    import tensorflow as tf

    keras = tf.keras
    inp = keras.Input((8, 8, 1), batch_size=1)
    if op == "zero":
        x = keras.layers.Lambda(lambda t: keras.ops.divide(t, t))(inp)
    else:
        x = keras.layers.Lambda(lambda t: keras.ops.sqrt(keras.ops.negative(t)))(inp)
    out = keras.layers.Dense(len(LABELS), activation="softmax")(keras.layers.Flatten()(x))
    return tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out)).convert()


def harness(mosquitto: Mosquitto, tmp_path: Path, key, **kw) -> AgentHarness:
    return AgentHarness(mosquitto.port, tmp_path / "dev1", "dev1", trusted_keys=[key[1]], **kw)


def push(session, agent, key, model: bytes, push_id: str, version: str, **raw) -> dict:
    manifest = manifest_dict(model, version=version, **raw)
    raw_push(session, BASE, push_id, offer_message(push_id, manifest, key), model)
    return agent.wait_result(push_id)


@pytest.mark.slow  # the trial child imports TensorFlow: 5 s on a quiet machine, 30 s loaded
def test_a_pushed_model_uses_the_configured_runtime(mosquitto, session, key, tmp_path) -> None:
    agent = harness(mosquitto, tmp_path, key, runtime="tensorflow")
    try:
        raw_push(session, BASE, "p1", offer_message("p1", manifest_dict(tiny_tflite()), key[0]),
                 tiny_tflite())
        assert agent.wait_result("p1", timeout=120)["result"] == "ok"
        current = agent.command("model", {"action": "current"})["result"]
    finally:
        agent.close()
    assert current["version"] == "1" and current["runtime"]["package"] == "tensorflow"


class GatedEngine:
    """A real engine whose invoke, on the inference thread only, can be held at a gate."""

    def __init__(self, engine: Engine, gate: threading.Event, held: threading.Event,
                 release: threading.Event) -> None:
        self.engine, self.gate, self.held, self.release = engine, gate, held, release
        self.input_shape, self.info = engine.input_shape, engine.info

    def invoke(self, x: np.ndarray) -> np.ndarray:
        if self.gate.is_set() and threading.current_thread().name == "inference":
            self.held.set()
            self.release.wait(30)
        return self.engine.invoke(x)

    def reset_state(self) -> None:
        self.engine.reset_state()


def test_ok_only_once_the_new_model_serves(mosquitto, session, key, tmp_path) -> None:
    gate, held, release = threading.Event(), threading.Event(), threading.Event()

    def factory(path: Path, manifest: ModelManifest) -> GatedEngine:
        engine = Engine(path, num_threads=1)
        engine.check_manifest(manifest)
        return GatedEngine(engine, gate, held, release)

    agent = harness(mosquitto, tmp_path, key, engine_factory=factory)
    try:
        agent.app.switch.swap_timeout_s = 0.5
        gate.set()
        assert held.wait(20), "the inference thread never reached the gate"
        result = push(session, agent, key[0], tiny_tflite(), "p1", "1")
        release.set()
        assert result["result"] == "error", result
        assert "did not take the new model within 0.5 s" in result["reason"]
        assert result["active_version"] == "0"
        gate.clear()
        assert agent.serving() == ("tiny", "0") and agent.store.active().manifest.version == "0"
        assert [m.manifest.version for m in agent.store.list()] == ["0"]
    finally:
        release.set()
        agent.close()


def install_previous(agent: AgentHarness, tmp_path: Path, model: bytes, version: str) -> None:
    """Put ``model`` into the store as the version before the active one."""
    src = write_bundle(tmp_path / f"prev-{version}", model, name="nanzero", version=version,
                       file="nanzero.tflite")
    staged = agent.store.new_staging(f"prev-{version}")
    for p in src.parent.iterdir():
        shutil.copyfile(p, staged / p.name)
    active = agent.store.active()
    agent.store.activate(agent.store.install(staged))
    agent.store.activate(active)


def test_rollback_command_refuses_a_previous_model_with_non_finite_output(mosquitto, key,
                                                                          tmp_path) -> None:
    agent = harness(mosquitto, tmp_path, key)
    try:
        install_previous(agent, tmp_path, tiny_with("zero"), "0.1")
        assert agent.store.previous().manifest.name == "nanzero"
        reply = agent.command("model", {"action": "rollback"})
        assert not reply["ok"] and "not finite" in reply["error"], reply
        assert agent.serving() == ("tiny", "0")
        assert agent.store.active().manifest.name == "tiny"
    finally:
        agent.close()


def test_rollback_command_loads_the_previous_model_and_reports_it(mosquitto, session, key,
                                                                  tmp_path) -> None:
    agent = harness(mosquitto, tmp_path, key)
    try:
        assert push(session, agent, key[0], tiny_tflite(), "p1", "1")["result"] == "ok"
        reply = agent.command("model", {"action": "rollback"})
        assert reply["ok"] and reply["result"]["version"] == "0", reply
        rolled = agent.wait_result(None, result="rolled_back")
        assert agent.serving() == ("tiny", "0")
    finally:
        agent.close()
    assert rolled["via"] == "command" and rolled["version"] == "1"
    assert rolled["active_version"] == "0"


def test_automatic_rollback_keeps_the_run_time_settings(mosquitto, session, key,
                                                        tmp_path) -> None:
    agent = harness(mosquitto, tmp_path, key)
    try:
        assert agent.command("pause", {})["ok"]
        result = push(session, agent, key[0], tiny_with("frames"), "p1", "1", name="nanframes",
                      file="nanframes.tflite")
        assert result["result"] == "ok", result  # finite on the zero warm-up input
        values = {"top_k": 1, "min_score": 0.25}
        assert agent.command("config", {"action": "set", "values": values})["ok"]
        assert agent.command("resume", {})["ok"]
        rolled = agent.wait_result(None, result="rolled_back")
        settings = agent.command("config", {"action": "get"})["result"]
        assert agent.serving() == ("tiny", "0")
    finally:
        agent.close()
    assert rolled["via"] == "automatic" and rolled["name"] == "nanframes"
    assert "NaN" in rolled["reason"] and rolled["active_version"] == "0"
    assert (settings["top_k"], settings["min_score"]) == (1, 0.25)
