"""The progress policy the watchdog follows, and the stats record's shape."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from agent.contract import SourceStatsRecord, StatsRecord
from agent.health import ProgressPolicy
from agent.inference.pipeline import FrameInbox, Pipeline, build_loaded_model
from tests.test_stages import ScriptedBackend, frame, manifest

STALL_S = 1.0


class CameraState:
    """What the policy reads of a camera (the device itself cannot exist here)."""

    def __init__(self, waiting: bool, idle_s: float) -> None:
        self.waiting_legitimately = waiting
        self.idle_s = idle_s

    @property
    def last_progress_mono(self) -> float:
        """Idle for ``idle_s`` when the policy looks (parametrize builds these at collection)."""
        return time.monotonic() - self.idle_s


def pipeline(backend: ScriptedBackend | None = None) -> Pipeline:
    model = build_loaded_model(manifest(), Path("."), backend or ScriptedBackend(1), 1, 0.0)
    return Pipeline(model, FrameInbox(), lambda r: None)


def stalled(p: Pipeline) -> Pipeline:
    p.last_progress = time.monotonic() - 10 * STALL_S
    return p


def test_recent_inference_is_progress() -> None:
    assert ProgressPolicy(pipeline(), [CameraState(False, 100)], STALL_S)()


def test_frames_waiting_without_inference_is_a_stall() -> None:
    p = stalled(pipeline())
    p.inbox.put(frame("cam", 0))
    assert not ProgressPolicy(p, [], STALL_S)()


def test_an_invoke_that_hangs_is_a_stall_even_when_paused() -> None:
    p = stalled(pipeline())
    p.busy_since = time.monotonic() - 2 * STALL_S
    p.pause()
    assert not ProgressPolicy(p, [], STALL_S)()


@pytest.mark.parametrize(("cameras", "ok"), [
    pytest.param([], True, id="no-cameras"),
    pytest.param([(True, 100)], True, id="camera-waits-for-a-reason"),
    pytest.param([(False, 0)], True, id="camera-delivered-lately"),
    pytest.param([(False, 0), (False, 100)], False, id="one-camera-stuck"),
])
def test_an_idle_pipeline_follows_its_cameras(cameras: list[tuple[bool, float]],
                                              ok: bool) -> None:
    states = [CameraState(waiting, idle_s) for waiting, idle_s in cameras]
    assert ProgressPolicy(stalled(pipeline()), states, STALL_S)() is ok  # type: ignore[arg-type]


def test_paused_and_idle_is_progress() -> None:
    p = stalled(pipeline())
    p.pause()
    assert ProgressPolicy(p, [CameraState(False, 100)], STALL_S)()  # type: ignore[list-item]


def test_a_running_pipeline_recovers_from_a_stall() -> None:
    release = threading.Event()
    p = stalled(pipeline(ScriptedBackend(1, block=release)))
    policy = ProgressPolicy(p, [], STALL_S)
    p.start()
    try:
        p.inbox.put(frame("cam", 0))
        deadline = time.monotonic() + 10
        while p.busy_since is None:
            assert time.monotonic() < deadline, "the frame never reached the backend"
            time.sleep(0.005)
        p.busy_since -= 2 * STALL_S  # as if the invoke had hung for a while
        assert not policy()
        release.set()
        while not policy():
            assert time.monotonic() < deadline, "progress never came back"
            time.sleep(0.005)
    finally:
        release.set()
        p.stop()


SCALARS = {"int", "float", "bool", "int | None", "float | None"}


def test_stats_record_fields_are_json_scalars_or_the_per_source_table() -> None:
    for f in dataclasses.fields(StatsRecord):
        if f.type == "dict[str, SourceStatsRecord]":
            assert {g.type for g in dataclasses.fields(SourceStatsRecord)} <= SCALARS
        else:
            assert f.type in SCALARS, f
