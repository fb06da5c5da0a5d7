"""Rollout planning and the abort rule (pure functions) and the rollout state file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import DeployError
from deploy.rollout import RolloutPolicy, judge, plan_waves, wave_sizes
from deploy.rollout_state import DeviceRecord, RolloutRecord, RolloutStore, new_rollout_id


@pytest.mark.parametrize(("spec", "total", "sizes"), [
    ("all", 7, [7]),
    ("30", 100, [30, 30, 30, 10]),
    ("10%", 95, [10] * 9 + [5]),
    ("5%,15%,80%", 100, [5, 15, 80]),
    ("1,2", 7, [1, 2, 2, 2]),
    ("exp:5", 100, [5, 10, 20, 40, 25]),
    ("exp:1:3", 10, [1, 3, 6]),
    ("exp:2", 0, []),
])
def test_wave_sizes_cover_every_device_once(spec: str, total: int, sizes: list[int]) -> None:
    assert wave_sizes(spec, total) == sizes


@pytest.mark.parametrize("spec", ["bogus", "0", "exp:0", "10%,x", "-5"])
def test_a_bad_wave_spec_is_refused_naming_it(spec: str) -> None:
    with pytest.raises(DeployError, match="--waves"):
        RolloutPolicy(waves=spec)


def test_canaries_come_first_one_per_wave() -> None:
    waves = plan_waves(["d", "a", "c", "b", "e"], RolloutPolicy(canaries=2, waves="2"))
    assert waves == [["a"], ["b"], ["c", "d"], ["e"]]


def test_the_rule_waits_for_enough_answers_then_compares_the_share() -> None:
    policy = RolloutPolicy(min_answered=4, max_failure_share=0.25)
    three = {"a": "ok", "b": "refused", "c": "timeout"}
    assert not judge(three, policy, []).stop  # 2 of 3 failed, but only 3 answered
    four = {**three, "d": "ok"}
    verdict = judge(four, policy, [])
    assert verdict.stop and verdict.failed == 2 and "2 of 4" in (verdict.reason or "")
    assert not judge({"a": "ok", "b": "noop", "c": "ok", "d": "rolled_back"}, policy, []).stop
    assert judge({"a": "ok", "b": "error", "c": "ok", "d": "rolled_back"}, policy, []).stop


def test_a_failed_canary_always_stops() -> None:
    policy = RolloutPolicy(min_answered=100, max_failure_share=1.0)
    assert judge({"a": "refused"}, policy, ["a"]).stop


def test_the_state_file_round_trips_and_refuses_bad_ids(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path)
    rec = RolloutRecord(id=new_rollout_id(), group="g", prefix="edge", source="/m.json",
                        key="/k", model={"name": "m", "version": "1", "sha256": "0" * 64},
                        policy=RolloutPolicy(waves="2").as_dict(), chunk_size=1024,
                        waves=[["a", "b"]], devices={"a": DeviceRecord(0, "ok"),
                                                     "b": DeviceRecord(0)})
    store.save(rec)
    again = store.load(rec.id)
    assert again.devices["a"].result == "ok" and again.answered() == {"a": "ok"}
    assert [r.id for r in store.list()] == [rec.id]
    assert not list(store.folder.glob(".*tmp*"))  # atomic write left no temporary file
    with pytest.raises(DeployError, match="not of the form"):
        store.load("../../etc/passwd")
    (store.folder / f"{rec.id}.json").write_text("{")
    with pytest.raises(DeployError, match="not a rollout state file"):
        store.load(rec.id)


def test_only_one_process_runs_a_rollout(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path)
    rid = new_rollout_id()
    with store.running(rid):
        assert store.is_running(rid)
        with pytest.raises(DeployError, match="another edge-deploy"), store.running(rid):
            pass
    assert not store.is_running(rid)
