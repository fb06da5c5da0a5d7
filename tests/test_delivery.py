"""ModelReceiver against a real Mosquitto, real TFLite models and real signatures."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.models.signing import generate_keypair, load_private_key, sign_manifest
from agent.models.wire import commit_message, encode_chunk, manifest_message
from deploy.broker import MqttSession
from deploy.push import Bundle, load_bundle, send_push
from tests.support.broker import Mosquitto
from tests.support.mqtt_client import Collector
from tests.test_deploy_helpers import AgentHarness, manifest_dict, tiny_tflite, write_bundle


@pytest.fixture(scope="module")
def model() -> bytes:
    return tiny_tflite()


@pytest.fixture
def key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    files = generate_keypair(tmp_path / "keys")
    return load_private_key(files.private), files.public


@pytest.fixture
def session(mosquitto: Mosquitto) -> Iterator[MqttSession]:
    s = MqttSession(mosquitto.url)
    yield s
    s.close()


@pytest.fixture
def agent(mosquitto: Mosquitto, tmp_path: Path, key) -> Iterator[AgentHarness]:
    h = AgentHarness(mosquitto.port, tmp_path / "dev1", "dev1", trusted_keys=[key[1]],
                     groups=("g1",))
    yield h
    h.close()


def bundle_of(tmp_path: Path, model: bytes, **kw: Any) -> Bundle:
    folder = tmp_path / f"bundle-{kw.get('version', '1')}-{len(model)}"
    return load_bundle(write_bundle(folder, model, **kw))


def raw_push(session: MqttSession, base: str, push_id: str, raw: dict[str, Any],
             signature: str, model: bytes, chunk_size: int = 1000) -> None:
    """Publish a push without the checks ``send_push`` does on the sender's side."""
    session.publish(f"{base}/manifest", manifest_message(push_id, raw, signature, chunk_size))
    mids = set()
    for i, off in enumerate(range(0, len(model), chunk_size)):
        chunk = encode_chunk(push_id, i, model[off:off + chunk_size])
        mids.add(session.publish(f"{base}/chunk", chunk))
    mids.add(session.publish(f"{base}/commit", commit_message(push_id)))
    session.wait_acked(mids, 10)


def test_push_is_verified_loaded_warmed_and_activated(mosquitto, session, agent, key, model,
                                                      tmp_path) -> None:
    watcher = Collector(mosquitto.port, "edge/+/model/result")
    send_push(session, "edge/dev1/model", "p1", bundle_of(tmp_path, model), key[0],
              chunk_size=1000)
    result = agent.wait_result("p1")
    assert result["result"] == "ok", result
    assert result["device"] == "dev1" and result["version"] == "1" and result["via"] == "device"
    assert result["invoke_ms"] > 0
    installed, engine = agent.ready[0]
    assert engine.input_shape == (1, 8, 8, 1)
    assert agent.store.active() == installed
    assert (installed.folder / "manifest.sig").is_file()
    published = watcher.wait_topic("edge/dev1/model/result")[0].json()
    assert published["push_id"] == "p1" and published["result"] == "ok"
    watcher.close()


def test_same_version_again_is_a_noop(session, agent, key, model, tmp_path) -> None:
    bundle = bundle_of(tmp_path, model)
    send_push(session, "edge/dev1/model", "p1", bundle, key[0])
    assert agent.wait_result("p1")["result"] == "ok"
    send_push(session, "edge/dev1/model", "p2", bundle, key[0])
    result = agent.wait_result("p2")
    assert result["result"] == "noop" and "already active" in result["reason"]
    assert len(agent.ready) == 1


def test_signature_by_an_untrusted_key_is_refused(session, agent, model, tmp_path) -> None:
    stranger = Ed25519PrivateKey.generate()
    send_push(session, "edge/dev1/model", "p1", bundle_of(tmp_path, model), stranger)
    result = agent.wait_result("p1")
    assert result["result"] == "refused"
    assert "matches none of the 1 trusted key" in result["reason"]
    assert agent.store.active() is None and agent.ready == []


def test_corrupt_chunk_is_refused_by_sha256(session, agent, key, model) -> None:
    raw = manifest_dict(model)
    bad = bytearray(model)
    bad[len(bad) // 2] ^= 0xFF
    raw_push(session, "edge/dev1/model", "p1", raw, sign_manifest(raw, key[0]), bytes(bad))
    result = agent.wait_result("p1")
    assert result["result"] == "refused" and "sha256 of the received bytes" in result["reason"]
    assert not any(agent.store.staging_dir.iterdir())


def test_model_whose_input_differs_from_its_manifest_is_refused(session, agent, key,
                                                                tmp_path) -> None:
    other = tiny_tflite(side=6)
    raw = manifest_dict(other, side=8)
    raw_push(session, "edge/dev1/model", "p1", raw, sign_manifest(raw, key[0]), other)
    result = agent.wait_result("p1")
    assert result["result"] == "refused"
    assert "input shape [1, 6, 6, 1] != manifest [1, 8, 8, 1]" in result["reason"]
    assert agent.store.list() == []


def test_file_name_leaving_the_model_folder_is_refused(session, agent, key, model) -> None:
    raw = manifest_dict(model, file="../../evil.tflite")
    raw_push(session, "edge/dev1/model", "p1", raw, sign_manifest(raw, key[0]), model)
    result = agent.wait_result("p1")
    assert result["result"] == "refused" and "plain file name" in result["reason"]
    assert not list(agent.store.root.parent.rglob("evil.tflite"))


def test_model_over_the_size_limit_is_refused(mosquitto, session, key, model, tmp_path) -> None:
    small = AgentHarness(mosquitto.port, tmp_path / "small", "small", trusted_keys=[key[1]],
                         max_model_bytes=1000)
    try:
        send_push(session, "edge/small/model", "p1", bundle_of(tmp_path, model), key[0])
        result = small.wait_result("p1")
    finally:
        small.close()
    assert result["result"] == "refused" and "over this device's limit of 1000" in result["reason"]


def test_not_a_tflite_file_is_refused(session, agent, key) -> None:
    junk = b"definitely not a flatbuffer" * 50
    raw = manifest_dict(junk)
    raw_push(session, "edge/dev1/model", "p1", raw, sign_manifest(raw, key[0]), junk)
    result = agent.wait_result("p1")
    assert result["result"] == "refused" and "cannot load this model" in result["reason"]


def test_interrupted_push_is_cleaned_after_timeout(mosquitto, session, key, model,
                                                   tmp_path) -> None:
    h = AgentHarness(mosquitto.port, tmp_path / "d", "d", trusted_keys=[key[1]],
                     staging_timeout_s=0.5)
    try:
        raw = manifest_dict(model)
        session.publish("edge/d/model/manifest",
                        manifest_message("p1", raw, sign_manifest(raw, key[0]), 1000))
        session.publish("edge/d/model/chunk", encode_chunk("p1", 0, model[:1000]))
        result = h.wait_result("p1", timeout=10)
        assert result["result"] == "refused" and "push abandoned: 1 of" in result["reason"]
        assert not any(h.store.staging_dir.iterdir())
    finally:
        h.close()


def test_group_push_reaches_every_member(mosquitto, session, key, model, tmp_path) -> None:
    agents = [AgentHarness(mosquitto.port, tmp_path / d, d, trusted_keys=[key[1]],
                           groups=("lobby",)) for d in ("cam1", "cam2")]
    try:
        send_push(session, "edge/group/lobby/model", "g1", bundle_of(tmp_path, model), key[0])
        results = [a.wait_result("g1") for a in agents]
    finally:
        for a in agents:
            a.close()
    assert [r["result"] for r in results] == ["ok", "ok"]
    assert {r["via"] for r in results} == {"group:lobby"}


def test_failed_swap_is_an_error_and_keeps_the_old_model(mosquitto, session, key, model,
                                                         tmp_path) -> None:
    def refuse(installed, engine) -> None:
        raise RuntimeError("pipeline is stopping")

    h = AgentHarness(mosquitto.port, tmp_path / "d", "d", trusted_keys=[key[1]], on_ready=refuse)
    try:
        send_push(session, "edge/d/model", "p1", bundle_of(tmp_path, model), key[0])
        result = h.wait_result("p1")
    finally:
        h.close()
    assert result["result"] == "error" and "pipeline is stopping" in result["reason"]
    assert h.store.active() is None


def test_malformed_messages_get_reasons_and_do_not_stop_the_receiver(session, agent, key,
                                                                     model, tmp_path) -> None:
    session.publish("edge/dev1/model/manifest", b"{not json")
    session.publish("edge/dev1/model/chunk", b"garbage")
    session.publish("edge/dev1/model/commit", json.dumps({"push_id": "nope"}).encode())
    assert "not JSON" in agent.wait_result(None)["reason"]
    assert "manifest never arrived" in agent.wait_result("nope")["reason"]
    send_push(session, "edge/dev1/model", "p1", bundle_of(tmp_path, model), key[0])
    assert agent.wait_result("p1")["result"] == "ok"


def test_new_version_replaces_and_keeps_previous_for_rollback(session, agent, key, model,
                                                              tmp_path) -> None:
    send_push(session, "edge/dev1/model", "p1", bundle_of(tmp_path, model), key[0])
    send_push(session, "edge/dev1/model", "p2", bundle_of(tmp_path, model, version="2"), key[0])
    assert agent.wait_result("p2")["result"] == "ok"
    assert agent.store.active().manifest.version == "2"
    assert agent.store.previous().manifest.version == "1"
    assert hashlib.sha256(agent.store.active().model_path.read_bytes()).hexdigest() == \
        agent.store.active().manifest.sha256


def test_disk_trouble_is_an_error_result_and_the_receiver_keeps_working(session, agent, key,
                                                                        model,
                                                                        tmp_path) -> None:
    staging = agent.store.staging_dir
    shutil.rmtree(staging, ignore_errors=True)
    staging.write_text("a file where the staging folder should be")
    send_push(session, "edge/dev1/model", "p1", bundle_of(tmp_path, model), key[0])
    result = agent.wait_result("p1")
    assert result["result"] == "error" and "agent error" in result["reason"]
    staging.unlink()
    send_push(session, "edge/dev1/model", "p2", bundle_of(tmp_path, model), key[0])
    assert agent.wait_result("p2")["result"] == "ok"


def test_duplicate_manifest_mid_push_keeps_the_chunks_received(session, agent, key,
                                                               model) -> None:
    raw = manifest_dict(model)
    message = manifest_message("p1", raw, sign_manifest(raw, key[0]), 1000)
    session.publish("edge/dev1/model/manifest", message)
    mids = {session.publish("edge/dev1/model/chunk", encode_chunk("p1", i, model[o:o + 1000]))
            for i, o in enumerate(range(0, len(model), 1000))}
    mids.add(session.publish("edge/dev1/model/manifest", message))  # as a QoS 1 resend would
    mids.add(session.publish("edge/dev1/model/commit", commit_message("p1")))
    session.wait_acked(mids, 10)
    assert agent.wait_result("p1")["result"] == "ok"
