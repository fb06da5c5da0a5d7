"""Two real agent processes in one group, a real Mosquitto, the real edge-deploy CLI: group
push and swap with no frame lost, refusals that leave the running model alone, and an automatic
rollback of a model that fails after the swap."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.demo import write_digits_video
from agent.files import sha256_file
from agent.manifest import load_manifest
from agent.models.signing import generate_keypair, load_private_key
from bench.support.agent_proc import DATA, REPO, AgentProcess, agent_config
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector
from deploy.broker import MqttSession
from deploy.push import Bundle, load_bundle, send_push

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")
DEVICES = ("a1", "a2")
LOOP = 200  # frames in the digits video


def model_variant(folder: Path, version: str, **changes: Any) -> Path:
    """The reference CNN under another version (and optional manifest changes)."""
    folder.mkdir(parents=True)
    shutil.copyfile(DATA / "digits_cnn.tflite", folder / "digits_cnn.tflite")
    raw = json.loads((DATA / "digits_cnn.json").read_text())
    raw["version"] = version
    for key, value in changes.items():
        raw[key] = value
    (folder / "digits_cnn.json").write_text(json.dumps(raw))
    return folder


def nan_model(folder: Path) -> Path:
    """Loads, passes a zero-input warm-up, then returns NaN on any real (positive) frame."""
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    inp = keras.Input((28, 28, 1), batch_size=1)
    x = keras.layers.Lambda(lambda t: keras.ops.sqrt(keras.ops.negative(t)))(inp)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(10, activation="softmax")(x)
    data = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out)).convert()
    folder.mkdir(parents=True)
    (folder / "nan_cnn.tflite").write_bytes(data)
    raw = json.loads((DATA / "digits_cnn.json").read_text())
    raw.update(name="nan_cnn", version="3.0.0", file="nan_cnn.tflite", quantize="float32",
               sha256=sha256_file(folder / "nan_cnn.tflite"), size_bytes=len(data))
    raw["input"].update(dtype="float32", quantization=None)
    raw["output"].update(dtype="float32", quantization=None)
    (folder / "nan_cnn.json").write_text(json.dumps(raw))
    return folder


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker = Mosquitto(tmp / "broker").start()
        self.keys = generate_keypair(tmp / "keys")
        video = tmp / "digits.avi"
        write_digits_video(video, fps=30)
        self.sub = Collector(self.broker.port, ["edge/#"])
        self.agents = [AgentProcess(self._config(d, video)) for d in DEVICES]
        for d in DEVICES:
            self.sub.wait_topic(f"edge/{d}/labels", count=5, timeout=30)

    def _config(self, device: str, video: Path) -> Path:
        path = agent_config(self.tmp, self.broker.port, [
            {"name": "cam", "type": "camera", "uri": str(video), "loop": True,
             "realtime": True}], device=device)
        import yaml

        raw = yaml.safe_load(path.read_text())
        raw["device"]["groups"] = ["lobby"]
        raw["delivery"] = {"trusted_keys": [str(self.keys.public)]}
        path.write_text(yaml.safe_dump(raw))
        return path

    def push(self, source: Path, *target: str, key: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deploy.cli", "push", str(source), *target, "--broker",
             self.broker.url, "--key", str(key or self.keys.private), "--timeout", "30",
             "--quiet", "--state-dir", str(self.tmp / "deploy-state")],
            capture_output=True, text=True, timeout=90, cwd=REPO)

    def labels(self, device: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.on_topic(f"edge/{device}/labels")]

    def results(self, device: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.on_topic(f"edge/{device}/model/result")]

    def wait_version(self, device: str, version: str, count: int = 5) -> None:
        self.sub.wait_for(lambda ms: sum(
            1 for m in ms if m.topic == f"edge/{device}/labels"
            and m.json()["model"]["version"] == version) >= count, timeout=30,
            what=f"{count} labels from {device} with version {version}")

    def close(self) -> None:
        for a in self.agents:
            a.terminate_timed()
        self.sub.close()
        self.broker.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    yield f
    f.close()


def test_group_push_reaches_both_and_no_frame_is_lost(fleet: Fleet) -> None:
    v2 = model_variant(fleet.tmp / "v2", "2.0.0")
    out = fleet.push(v2, "--group", "lobby")
    assert out.returncode == 0, out.stdout + out.stderr
    for d in DEVICES:
        assert f"{d}" in out.stdout and "ok" in out.stdout
        fleet.wait_version(d, "2.0.0")
        labels = fleet.labels(d)
        seqs = [m["seq"] for m in labels]
        assert seqs == list(range(1, len(seqs) + 1)), "a seq is missing or repeated"
        switch = next(i for i, m in enumerate(labels) if m["model"]["version"] == "2.0.0")
        around = labels[max(0, switch - 10):switch + 5]
        frames = [m["frame_index"] for m in around]
        steps = {(b - a) % LOOP for a, b in itertools.pairwise(frames)}
        assert steps == {1}, f"frames around the swap: {frames}"
        status = [m.json() for m in fleet.sub.on_topic(f"edge/{d}/status")][-1]
        assert status["model"]["version"] == "2.0.0"


def test_refusals_leave_the_running_model_alone(fleet: Fleet) -> None:
    fleet.wait_version("a1", "2.0.0", count=1)
    other = generate_keypair(fleet.tmp / "other-keys")
    v3 = model_variant(fleet.tmp / "v3", "3.0.0")
    bad_sig = fleet.push(v3, "--device", "a1", key=other.private)
    assert bad_sig.returncode == 1 and "refused" in bad_sig.stdout
    assert "signature" in fleet.results("a1")[-1]["reason"]

    wrong_shape = model_variant(fleet.tmp / "v4", "4.0.0", input={
        **load_manifest(DATA / "digits_cnn.json").model_dump(mode="json")["input"],
        "shape": [1, 32, 32, 1]})
    out = fleet.push(wrong_shape, "--device", "a1")
    assert out.returncode == 1
    assert "input shape" in fleet.results("a1")[-1]["reason"]

    bundle = load_bundle(v3)
    corrupt = Bundle(bundle.manifest_path, bundle.raw, bundle.manifest,
                     bundle.model[:100] + bytes([bundle.model[100] ^ 0xFF]) + bundle.model[101:])
    session = MqttSession(fleet.broker.url)
    try:
        send_push(session, "edge/a1/model", "corrupt-1", corrupt,
                  load_private_key(fleet.keys.private))
    finally:
        session.close()
    fleet.sub.wait_for(lambda ms: any(r.get("push_id") == "corrupt-1"
                                      for r in fleet.results("a1")), timeout=20,
                       what="result of the corrupt push")
    result = next(r for r in fleet.results("a1") if r.get("push_id") == "corrupt-1")
    assert result["result"] == "refused" and "sha256" in result["reason"]

    n = len(fleet.labels("a1"))
    fleet.sub.wait_topic("edge/a1/labels", count=n + 10, timeout=10)
    assert {m["model"]["version"] for m in fleet.labels("a1")[n:]} == {"2.0.0"}


def test_model_failing_after_the_swap_is_rolled_back(fleet: Fleet) -> None:
    broken = nan_model(fleet.tmp / "nan")
    out = fleet.push(broken, "--device", "a2")
    assert out.returncode == 0, out.stdout + out.stderr  # it loads and warms up fine
    fleet.sub.wait_for(lambda ms: any(r["result"] == "rolled_back"
                                      for r in fleet.results("a2")), timeout=20,
                       what="automatic rollback")
    rolled = next(r for r in fleet.results("a2") if r["result"] == "rolled_back")
    assert rolled["name"] == "nan_cnn" and "NaN" in rolled["reason"]
    assert rolled["active_version"] == "2.0.0"
    n = len(fleet.labels("a2"))
    fleet.sub.wait_topic("edge/a2/labels", count=n + 5, timeout=10)
    assert {m["model"]["name"] for m in fleet.labels("a2")[n:]} == {"digits_cnn"}
    status = [m.json() for m in fleet.sub.on_topic("edge/a2/status")][-1]
    assert status["model"]["name"] == "digits_cnn"
