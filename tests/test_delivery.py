"""Model delivery against a real agent (AgentApp), a real Mosquitto, real TFLite models and real
signatures: the happy path, refusals with reasons, and what a push leaves on disk."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.models.wire import Target, encode_chunk
from bench.support.broker import Mosquitto
from bench.support.deploy_helpers import (
    AgentHarness,
    manifest_dict,
    offer_message,
    raw_push,
    tiny_tflite,
    write_bundle,
)
from deploy.push import Bundle, load_bundle, send_push


@pytest.fixture
def agent(mosquitto: Mosquitto, tmp_path: Path, key) -> Iterator[AgentHarness]:
    h = AgentHarness(mosquitto.port, tmp_path / "dev1", "dev1", trusted_keys=[key[1]],
                     groups=("g1",))
    yield h
    h.close()


def bundle_of(tmp_path: Path, model: bytes, **kw: Any) -> Bundle:
    folder = tmp_path / f"bundle-{kw.get('version', '1')}-{len(model)}"
    return load_bundle(write_bundle(folder, model, **kw))


def test_push_is_verified_tried_warmed_and_serving_when_ok(session, agent, key, model,
                                                           tmp_path) -> None:
    send_push(session, "edge/dev1/model", "p1", bundle_of(tmp_path, model), key[0],
              chunk_size=1000)
    result = agent.wait_result("p1")
    assert agent.serving() == ("tiny", "1")  # ok is sent only once the new model serves
    assert result["result"] == "ok", result
    assert result["device"] == "dev1" and result["version"] == "1" and result["via"] == "device"
    assert result["active_version"] == "1"
    assert result["invoke_ms"] > 0 and result["trial_ms"] > 0
    installed = agent.store.active()
    assert installed.manifest.version == "1"
    signed = json.loads((installed.folder / "manifest.sig").read_text())
    assert signed["target"] == {"devices": ["dev1"]} and signed["chunk_size"] == 1000


def test_same_version_again_is_a_noop(session, agent, key, model, tmp_path) -> None:
    bundle = bundle_of(tmp_path, model)
    send_push(session, "edge/dev1/model", "p1", bundle, key[0])
    assert agent.wait_result("p1")["result"] == "ok"
    send_push(session, "edge/dev1/model", "p2", bundle, key[0])
    result = agent.wait_result("p2")
    assert result["result"] == "noop" and "already active" in result["reason"]
    assert [r["push_id"] for r in agent.results] == ["p1", "p2"]


def test_signature_by_an_untrusted_key_is_refused(session, agent, model, tmp_path) -> None:
    stranger = Ed25519PrivateKey.generate()
    send_push(session, "edge/dev1/model", "p1", bundle_of(tmp_path, model), stranger)
    result = agent.wait_result("p1")
    assert result["result"] == "refused"
    assert "matches none of the 1 trusted key" in result["reason"]
    assert agent.serving() == ("tiny", "0") and result["active_version"] == "0"


def test_corrupt_chunk_is_refused_by_sha256(session, agent, key, model) -> None:
    bad = bytearray(model)
    bad[len(bad) // 2] ^= 0xFF
    raw_push(session, "edge/dev1/model", "p1", offer_message("p1", manifest_dict(model), key[0]),
             bytes(bad))
    result = agent.wait_result("p1")
    assert result["result"] == "refused" and "sha256 of the received bytes" in result["reason"]
    assert not any(agent.store.staging_dir.iterdir())


def test_model_whose_input_differs_from_its_manifest_is_refused(session, agent, key) -> None:
    other = tiny_tflite(side=6)
    raw_push(session, "edge/dev1/model", "p1",
             offer_message("p1", manifest_dict(other, side=8), key[0]), other)
    result = agent.wait_result("p1")
    assert result["result"] == "refused"
    assert "input shape [1, 6, 6, 1] != manifest [1, 8, 8, 1]" in result["reason"]
    assert [m.manifest.version for m in agent.store.list()] == ["0"]


@pytest.mark.parametrize("name, reason", [
    ("../../evil.tflite", "plain file name"),
    ("evil\x00.tflite", "no NUL"),
    ("e" * 300 + ".tflite", "at most 200 bytes"),
])
def test_bad_file_names_are_refused(session, agent, key, model, name, reason) -> None:
    raw_push(session, "edge/dev1/model", "p1",
             offer_message("p1", manifest_dict(model, file=name), key[0]), model)
    result = agent.wait_result("p1")
    assert result["result"] == "refused" and reason in result["reason"], result
    assert not list(agent.store.root.parent.rglob("evil*"))


def test_model_over_the_size_limit_is_refused(mosquitto, session, key, model, tmp_path) -> None:
    small = AgentHarness(mosquitto.port, tmp_path / "small", "small", trusted_keys=[key[1]],
                         max_model_bytes=1024)
    try:
        send_push(session, "edge/small/model", "p1", bundle_of(tmp_path, model), key[0])
        result = small.wait_result("p1")
    finally:
        small.close()
    assert result["result"] == "refused" and "over this device's limit of 1024" in result["reason"]


def test_not_a_tflite_file_is_refused(session, agent, key) -> None:
    junk = b"definitely not a flatbuffer" * 50
    raw_push(session, "edge/dev1/model", "p1", offer_message("p1", manifest_dict(junk), key[0]),
             junk)
    result = agent.wait_result("p1")
    assert result["result"] == "refused" and "cannot load this model" in result["reason"]


def test_interrupted_push_is_cleaned_after_timeout(mosquitto, session, key, model,
                                                   tmp_path) -> None:
    h = AgentHarness(mosquitto.port, tmp_path / "d", "d", trusted_keys=[key[1]],
                     staging_timeout_s=0.5)
    try:
        session.publish("edge/d/model/manifest", offer_message(
            "p1", manifest_dict(model), key[0], target=Target(devices=("d",))))
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
        serving = [a.serving() for a in agents]
    finally:
        for a in agents:
            a.close()
    assert [r["result"] for r in results] == ["ok", "ok"]
    assert {r["via"] for r in results} == {"group:lobby"}
    assert serving == [("tiny", "1"), ("tiny", "1")]


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
    message = offer_message("p1", manifest_dict(model), key[0])
    session.publish("edge/dev1/model/manifest", message)
    raw_push(session, "edge/dev1/model", "p1", None, model, commit=False)
    session.publish("edge/dev1/model/manifest", message)  # as a QoS 1 resend would
    raw_push(session, "edge/dev1/model", "p1", None, b"")
    assert agent.wait_result("p1")["result"] == "ok"


def test_an_unsigned_manifest_reusing_a_push_id_in_progress_does_not_cancel_it(
        session, agent, key, model) -> None:
    session.publish("edge/dev1/model/manifest", offer_message("p1", manifest_dict(model), key[0]))
    half = len(model) // 2000 * 1000
    raw_push(session, "edge/dev1/model", "p1", None, model[:half], commit=False)
    forged = offer_message("p1", manifest_dict(model, version="9"), key[0], signature="AAAA")
    session.publish("edge/dev1/model/manifest", forged)
    ignored = agent.wait_result(None)
    assert "reusing push id p1 (in progress) was ignored" in ignored["reason"]
    raw_push(session, "edge/dev1/model", "p1", None, model)
    result = agent.wait_result("p1")
    assert result["result"] == "ok" and result["version"] == "1", result
