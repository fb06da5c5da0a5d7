"""Fuzzing every topic the agent reads, against real agents and a real Mosquitto.

Random, nested, huge and binary payloads go to ``cmd/*``, ``model/*`` (device and group) and
``in/*``; then a validly signed push must still land, a ping must be answered and labels must
still flow. A frame agent (dev1) reads commands and model delivery; a sequence agent (dev2)
reads samples too. The default run is bounded (a few seconds of messages); the slow one sends
many more and bigger ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.demo import write_digits_video as digits_video
from agent.errors import PayloadError
from agent.models.signing import KeyPairFiles, generate_keypair
from agent.payloads import decode_json
from bench.support.agent_proc import DATA, REPO, AgentProcess, agent_config
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")

SCALARS = st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() \
    | st.text(max_size=30)
JSONISH = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=6)
                       | st.dictionaries(st.text(max_size=10), kids, max_size=6),
                       max_leaves=30)
PUSH_LIKE = st.fixed_dictionaries(
    {"push_id": st.text(max_size=24) | st.integers()},
    optional={"manifest": JSONISH, "signature": st.text(max_size=90) | st.binary(max_size=64),
              "index": st.integers(), "data": st.text(max_size=64), "chunks": st.integers(),
              "chunk_size": st.integers(), "id": JSONISH, "action": JSONISH,
              "values": JSONISH})


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * (depth // 2)


def payloads(huge: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=4096),
        JSONISH.map(lambda v: json.dumps(v).encode()),
        PUSH_LIKE.map(lambda v: json.dumps(v, default=repr).encode()),
        st.integers(1, 300_000).map(nested),
        st.builds(lambda byte, size: bytes([byte]) * size, st.integers(0, 255),
                  st.integers(1, huge)),
        st.sampled_from([b"", b"\xff\xfe\x00", b'{"id": "\xff"}', b"null", b"[]", b"{}",
                         b'{"id": 1, "push_id": "x\\n"}', "ü".encode("utf-16")]))


NAMES = st.sampled_from(["ping", "pause", "resume", "config", "model", "snapshot", "nope",
                         "x" * 70, "üñí", "ping/result"])
PARTS = st.sampled_from(["manifest", "chunk", "commit", "result", "bogus"])
TOPICS = st.one_of(
    NAMES.map(lambda n: f"edge/dev1/cmd/{n}"), NAMES.map(lambda n: f"edge/dev2/cmd/{n}"),
    NAMES.map(lambda n: f"edge/group/lobby/cmd/{n}"),
    PARTS.map(lambda p: f"edge/dev1/model/{p}"), PARTS.map(lambda p: f"edge/dev2/model/{p}"),
    PARTS.map(lambda p: f"edge/group/lobby/model/{p}"),
    st.sampled_from(["wrist", "s 1", "ok", "ü"]).map(lambda s: f"edge/dev2/in/{s}"))


@dataclass
class Fleet:
    tmp: Path
    broker: Mosquitto
    keys: KeyPairFiles
    sub: Collector
    frame_agent: AgentProcess
    sequence_agent: AgentProcess

    def alive(self) -> None:
        for agent in (self.frame_agent, self.sequence_agent):
            assert agent.proc.poll() is None, agent.log()[-3000:]


def fleet_config(tmp: Path, port: int, keys: KeyPairFiles, device: str,
                 sources: list[dict[str, object]], **kw: str) -> Path:
    path = agent_config(tmp, port, sources, device=device, **kw)
    raw = yaml.safe_load(path.read_text())
    raw["device"]["groups"] = ["lobby"]
    raw["delivery"] = {"trusted_keys": [str(keys.public)]}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fuzz")
    broker = Mosquitto(tmp / "broker").start()
    keys = generate_keypair(tmp / "keys")
    video = tmp / "digits.avi"
    digits_video(video)
    frame = AgentProcess(fleet_config(tmp, broker.port, keys, "dev1", sources=[
        {"name": "cam", "type": "camera", "uri": str(video), "loop": True, "realtime": True}]))
    sequence = AgentProcess(fleet_config(tmp, broker.port, keys, "dev2",
                                         sources=[{"name": "imu", "type": "mqtt"}],
                                         manifest="gestures_lstm.json"))
    sub = Collector(broker.port, ["edge/dev1/#", "edge/dev2/#"])
    try:
        sub.wait_topic("edge/dev1/labels", count=5, timeout=30)
        sub.wait_topic("edge/dev2/status", timeout=30)
        yield Fleet(tmp, broker, keys, sub, frame, sequence)
    finally:
        frame.terminate_timed()
        sequence.terminate_timed()
        sub.close()
        broker.stop()


def storm(fleet: Fleet, messages: list[tuple[str, bytes]]) -> None:
    for topic, payload in messages:
        fleet.sub.publish(topic, payload, qos=0)
    fleet.alive()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(messages=st.lists(st.tuples(TOPICS, payloads(256 << 10)), min_size=1, max_size=4))
def test_hostile_payloads_on_every_topic(fleet: Fleet, messages: list[tuple[str, bytes]]
                                         ) -> None:
    storm(fleet, messages)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(messages=st.lists(st.tuples(TOPICS, payloads(8 << 20)), min_size=1, max_size=12))
def test_many_more_hostile_payloads_on_every_topic(fleet: Fleet,
                                                   messages: list[tuple[str, bytes]]) -> None:
    storm(fleet, messages)


def is_reply(payload: bytes, request_id: str) -> bool:
    """The agent's reply to ``request_id`` (the storm also wrote junk on result topics)."""
    try:
        body = decode_json(payload, "reply")
    except PayloadError:
        return False
    return isinstance(body, dict) and body.get("id") == request_id


def push(fleet: Fleet, source: Path, *target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", "push", str(source), *target, "--broker",
         fleet.broker.url, "--key", str(fleet.keys.private), "--timeout", "60", "--quiet",
         "--state-dir", str(fleet.tmp / "deploy-state")],
        capture_output=True, text=True, timeout=120, cwd=REPO)


def test_after_the_storm_a_push_lands_pings_answer_and_labels_flow(fleet: Fleet) -> None:
    fleet.alive()
    for device in ("dev1", "dev2"):  # the storm may have paused them (cmd/pause, no id)
        fleet.sub.publish(f"edge/{device}/cmd/resume", b'{"id": "r"}')
    folder = fleet.tmp / "v9"
    folder.mkdir()
    shutil.copyfile(DATA / "digits_cnn.tflite", folder / "digits_cnn.tflite")
    raw = json.loads((DATA / "digits_cnn.json").read_text())
    raw["version"] = "9.0.0"
    (folder / "digits_cnn.json").write_text(json.dumps(raw))
    out = push(fleet, folder, "--device", "dev1")
    assert out.returncode == 0, out.stdout + out.stderr
    fleet.sub.wait_for(lambda ms: sum(m.topic == "edge/dev1/labels"
                                      and m.json()["model"]["version"] == "9.0.0"
                                      for m in ms) >= 5, timeout=30, what="labels of 9.0.0")
    for device in ("dev1", "dev2"):
        fleet.sub.publish(f"edge/{device}/cmd/ping", json.dumps({"id": f"p-{device}"}))
        fleet.sub.wait_for(lambda ms, d=device: any(
            m.topic == f"edge/{d}/cmd/ping/result" and is_reply(m.payload, f"p-{d}")
            for m in ms), timeout=15, what=f"ping reply from {device}")
    window = np.load(DATA / "gestures_sample.npz")["x"][0].astype(np.float32)
    before = len(fleet.sub.on_topic("edge/dev2/labels"))
    for _ in range(3):
        fleet.sub.publish("edge/dev2/in/clean", json.dumps(window.tolist()).encode())
    fleet.sub.wait_topic("edge/dev2/labels", count=before + 2, timeout=20)
    fleet.alive()
    for agent in (fleet.frame_agent, fleet.sequence_agent):
        assert "Traceback" not in agent.log(), agent.log()[-3000:]
