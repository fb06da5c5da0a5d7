"""Model delivery under a hostile network (issue 10): nested JSON, a dead worker, replays and
downgrades, targets and expiry, unsigned size fields, push-slot exhaustion, what stays on disk.
Each against a real agent (AgentApp) and a real Mosquitto."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.models.wire import Target
from bench.support.agent_proc import DATA
from bench.support.broker import Mosquitto
from bench.support.deploy_helpers import (
    AgentHarness,
    manifest_dict,
    offer_message,
    raw_push,
    write_bundle,
)
from deploy.push import load_bundle, send_push

BASE = "edge/dev1/model"


@pytest.fixture
def agent(mosquitto: Mosquitto, tmp_path: Path, key) -> Iterator[AgentHarness]:
    h = AgentHarness(mosquitto.port, tmp_path / "dev1", "dev1", trusted_keys=[key[1]],
                     groups=("g1",))
    yield h
    h.close()


def push(session, agent, key, model, push_id: str, version: str, **kw) -> dict:
    raw_push(session, BASE, push_id, offer_message(push_id, manifest_dict(model, version=version),
                                                   key, **kw), model)
    return agent.wait_result(push_id)


def test_nested_json_on_every_model_topic_is_refused_and_delivery_goes_on(session, agent, key,
                                                                          model) -> None:
    bomb = b"[" * 100_000
    for topic in (f"{BASE}/manifest", f"{BASE}/commit", "edge/group/g1/model/manifest",
                  "edge/group/g1/model/commit"):
        session.publish(topic, bomb)
    agent.watch.wait_for(lambda ms: sum("nested too deeply" in (r["reason"] or "")
                                        for r in agent.results) == 4, 20, what="4 refusals")
    assert push(session, agent, key[0], model, "p1", "1")["result"] == "ok"
    assert agent.app.receiver.health()["worker"] == "running"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_is_restarted_and_shown_in_status(session, agent, key, model,
                                                        monkeypatch) -> None:
    receiver = agent.app.receiver

    def die(item) -> None:
        raise SystemExit("worker killed by the test")

    monkeypatch.setattr(receiver, "_dispatch", die)
    session.publish(f"{BASE}/commit", b'{"push_id": "x"}')
    deadline = time.monotonic() + 10
    while receiver._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    monkeypatch.undo()
    assert push(session, agent, key[0], model, "p1", "1")["result"] == "ok"

    def restarted(ms) -> bool:
        return any(m.topic == agent.topics.status and (m.json().get("delivery") or {}).get(
            "restarts") == 1 and m.json()["delivery"]["worker"] == "running" for m in ms)

    agent.watch.wait_for(restarted, 10, what="status showing the restart")


def test_the_inbox_hold_of_a_commit_is_always_released(session, agent, key, model) -> None:
    assert push(session, agent, key[0], model, "p1", "1")["result"] == "ok"
    session.publish(f"{BASE}/commit", b'{"push_id": "p1"}')  # finished: no result is sent
    assert agent.app.receiver.wait_idle(10)
    assert agent.app.inbox._hold_depth == 0


def test_an_older_version_is_refused_unless_signed_as_a_rollback(session, agent, key,
                                                                 model) -> None:
    assert push(session, agent, key[0], model, "p1", "2")["result"] == "ok"
    old = push(session, agent, key[0], model, "p2", "1.5")
    assert old["result"] == "refused" and "lower than 2" in old["reason"], old
    assert agent.serving() == ("tiny", "2")
    back = push(session, agent, key[0], model, "p3", "1.5", rollback=True)
    assert back["result"] == "ok" and agent.serving() == ("tiny", "1.5")


def test_the_highest_version_survives_a_restart_and_pruning(mosquitto, session, key, model,
                                                            tmp_path) -> None:
    root = tmp_path / "dev1"
    agent = AgentHarness(mosquitto.port, root, "dev1", trusted_keys=[key[1]])
    try:
        assert push(session, agent, key[0], model, "p1", "3")["result"] == "ok"
    finally:
        agent.close()
    shutil.rmtree(agent.store.versions_dir)  # every installed version gone, seed comes back
    agent.store.pointer_path.unlink()
    agent = AgentHarness(mosquitto.port, root, "dev1", trusted_keys=[key[1]])
    try:
        assert agent.serving() == ("tiny", "0")
        replay = push(session, agent, key[0], model, "p2", "2")
        assert replay["result"] == "refused" and "lower than 3" in replay["reason"]
    finally:
        agent.close()


@pytest.mark.parametrize("target, topic, reason", [
    (Target(devices=("dev2",)), BASE, "signed for devices dev2, not for this device (dev1)"),
    (Target(group="lobby"), "edge/group/g1/model", "signed for group lobby"),
    (Target(devices=("dev2",)), "edge/group/g1/model", "not for this device"),
])
def test_a_push_signed_for_another_target_is_refused(session, agent, key, model, target, topic,
                                                     reason) -> None:
    raw_push(session, topic, "p1", offer_message("p1", manifest_dict(model), key[0],
                                                 target=target), model)
    result = agent.wait_result("p1")
    assert result["result"] == "refused" and reason in result["reason"], result
    assert agent.serving() == ("tiny", "0")


def test_a_group_signed_push_is_accepted_by_a_member(session, agent, key, model) -> None:
    raw_push(session, "edge/group/g1/model", "p1",
             offer_message("p1", manifest_dict(model), key[0], target=Target(group="g1")), model)
    result = agent.wait_result("p1")
    assert result["result"] == "ok" and result["via"] == "group:g1"


def test_an_expired_push_is_refused(session, agent, key, model) -> None:
    result = push(session, agent, key[0], model, "p1", "1", expires_in_s=-5)
    assert result["result"] == "refused" and "expired" in result["reason"]


@pytest.mark.parametrize("field, value", [
    ("chunk_size", 1), ("expires", 4e9), ("target", {"devices": ["dev1", "dev9"]}),
    ("rollback", True), ("push_id", "p2"),
])
def test_changing_any_signed_field_breaks_the_signature(session, agent, key, model, field,
                                                        value) -> None:
    message = json.loads(offer_message("p1", manifest_dict(model), key[0]))
    message[field] = value
    message = json.dumps(message).encode()
    pid = "p2" if field == "push_id" else "p1"
    raw_push(session, BASE, pid, message, model)
    result = agent.wait_result(pid)
    assert result["result"] == "refused" and "matches none" in result["reason"], result


def test_a_signed_tiny_chunk_size_is_refused_without_memory_growth(session, agent, key) -> None:
    raw = manifest_dict(b"x", version="5")
    raw["size_bytes"] = 8_000_000
    tracemalloc.start()
    try:
        session.publish(f"{BASE}/manifest", offer_message("p1", raw, key[0], chunk_size=1))
        session.publish(f"{BASE}/commit", b'{"push_id": "p1"}')
        result = agent.wait_result("p1")
        assert agent.app.receiver.wait_idle(10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["result"] == "refused" and "over the limit of 65536" in result["reason"]
    assert peak < 50 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"


def test_replays_of_the_active_manifest_take_no_push_slot(session, agent, key, model) -> None:
    assert push(session, agent, key[0], model, "p1", "1")["result"] == "ok"
    for i in range(6):
        message = offer_message(f"r{i}", manifest_dict(model, version="1"), key[0])
        session.publish(f"{BASE}/manifest", message)  # a manifest and no commit, six times
        assert agent.wait_result(f"r{i}")["result"] == "noop"
    assert push(session, agent, key[0], model, "p2", "2")["result"] == "ok"


def test_finished_push_ids_are_bounded_when_refused_too(session, agent, key, model) -> None:
    stranger = Ed25519PrivateKey.generate()
    mids = {session.publish(f"{BASE}/manifest", offer_message(f"x{i}", manifest_dict(model),
                                                              stranger)) for i in range(300)}
    session.wait_acked(mids, 20)
    agent.wait_result("x299")
    assert len(agent.app.receiver._finished) == 256


def test_a_refused_sequence_model_is_not_left_installed(session, agent, key) -> None:
    lstm = (DATA / "gestures_lstm.tflite").read_bytes()
    raw = json.loads((DATA / "gestures_lstm.json").read_text())
    raw["version"] = "9"
    raw_push(session, BASE, "p1", offer_message("p1", raw, key[0]), lstm)
    result = agent.wait_result("p1")
    assert result["result"] == "refused" and "sequence model cannot replace it" in result["reason"]
    assert [m.manifest.name for m in agent.store.list()] == ["tiny"]


@pytest.mark.parametrize("push_id", ["p1\n", "", "-p1", "p" * 65, "p/1"])
def test_bad_push_ids_are_refused(session, agent, key, model, push_id) -> None:
    message = json.loads(offer_message("p1", manifest_dict(model), key[0]))
    message["push_id"] = push_id
    session.publish(f"{BASE}/manifest", json.dumps(message).encode())
    result = agent.wait_result(None)
    assert result["result"] == "refused" and "must match" in result["reason"]


def test_group_push_with_send_push_signs_the_group(mosquitto, session, key, model,
                                                   tmp_path) -> None:
    member = AgentHarness(mosquitto.port, tmp_path / "m", "m1", trusted_keys=[key[1]],
                          groups=("lobby",))
    try:
        bundle = load_bundle(write_bundle(tmp_path / "b", model))
        send_push(session, "edge/group/lobby/model", "g1", bundle, key[0])
        assert member.wait_result("g1")["result"] == "ok"
        signed = json.loads((member.store.active().folder / "manifest.sig").read_text())
    finally:
        member.close()
    assert signed["target"] == {"group": "lobby"} and signed["expires"] > time.time()
