"""Signed models that crash the interpreter (issue 10 item 2): a pushed model is loaded,
checked and warmed in a child process first, so a segfault is a refusal and the running model
keeps serving. The mutation test flips words of a valid model, pushes each one signed, and
checks that the real agent answers every push and never dies."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ModelLoadError
from agent.models.loader import EngineSettings
from agent.models.trial import try_in_child
from bench.support.broker import Mosquitto
from bench.support.deploy_helpers import (
    AgentHarness,
    manifest_dict,
    offer_message,
    raw_push,
    tiny_tflite,
)

BASE = "edge/dev1/model"
CRASH_WORDS = (515, 535, 548)  # 32-bit words of the tiny model that segfault when set to -1


def with_word(model: bytes, index: int, value: int) -> bytes:
    b = bytearray(model)
    b[4 * index:4 * index + 4] = value.to_bytes(4, "little")
    return bytes(b)


def flipped(model: bytes, rng: random.Random, words: int = 2) -> bytes:
    b = bytearray(model)
    for _ in range(words):
        i = rng.randrange(len(b) // 4) * 4
        value = int.from_bytes(b[i:i + 4], "little") ^ rng.getrandbits(32)
        b[i:i + 4] = value.to_bytes(4, "little")
    return bytes(b)


def crashing_model(tmp_path: Path) -> bytes:
    """A signed-valid model that segfaults the interpreter, found among known words."""
    for word in CRASH_WORDS:
        candidate = with_word(tiny_tflite(), word, 0xFFFFFFFF)
        path = tmp_path / "candidate.tflite"
        path.write_bytes(candidate)
        try:
            try_in_child(path, manifest_dict(candidate), EngineSettings(), timeout_s=60)
        except ModelLoadError as exc:
            if "interpreter crashed" in str(exc):
                return candidate
    raise AssertionError(f"none of the words {CRASH_WORDS} crashes this build's tiny model")


@pytest.fixture
def agent(mosquitto: Mosquitto, tmp_path: Path, key) -> Iterator[AgentHarness]:
    h = AgentHarness(mosquitto.port, tmp_path / "dev1", "dev1", trusted_keys=[key[1]])
    yield h
    h.close()


def push(session, agent, key, model: bytes, push_id: str, version: str) -> dict:
    raw_push(session, BASE, push_id,
             offer_message(push_id, manifest_dict(model, version=version), key), model)
    return agent.wait_result(push_id, timeout=60)


def test_a_model_that_crashes_the_interpreter_is_refused_and_the_old_one_serves(
        session, agent, key, tmp_path) -> None:
    bad = crashing_model(tmp_path)
    result = push(session, agent, key[0], bad, "p1", "1")
    assert result["result"] == "refused", result
    assert result["reason"].startswith("the interpreter crashed (signal 11"), result
    assert agent.serving() == ("tiny", "0")
    assert agent.command("ping", {})["ok"]
    assert push(session, agent, key[0], tiny_tflite(), "p2", "2")["result"] == "ok"


def mutation_run(session, agent, key, count: int, seed: int) -> None:
    rng = random.Random(seed)
    seen = []
    for i in range(count):
        result = push(session, agent, key[0], flipped(tiny_tflite(), rng), f"m{i}", f"{i + 1}")
        assert result["result"] in ("ok", "refused"), result
        seen.append(result["result"])
    assert agent.command("ping", {})["ok"]
    assert agent.app.receiver.health()["worker"] == "running"
    assert len(seen) == count


def test_mutated_models_are_all_answered(session, agent, key) -> None:
    mutation_run(session, agent, key, count=4, seed=1)


@pytest.mark.slow
def test_many_mutated_models_are_all_answered(session, agent, key) -> None:
    mutation_run(session, agent, key, count=40, seed=2)
