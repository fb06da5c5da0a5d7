"""Reduced JPEG decoding (agent/capture/jpeg.py): the model sees what it saw before; several
sources into one model: every frame of each served, in order.

The capture thread decodes MJPEG packets at 1/2, 1/4 or 1/8 scale (luma only for gray
models) when the model's input is much smaller than the frame. These tests run real files
through a real ``CameraSource`` both ways and the reference CNN on both.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.camera import CameraOptions, CameraSource
from agent.capture.inbox import FrameInbox
from agent.demo import write_digits_video
from agent.inference.engine import Engine
from agent.inference.pipeline import build_loaded_model
from agent.inference.preprocess import FramePreprocessor
from agent.manifest import load_manifest
from agent.records import Frame
from bench.support.agent_proc import DATA

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")


def read_all(video: Path, plan: object) -> dict[int, np.ndarray]:
    """Every frame of ``video`` through a real capture thread, by index."""
    inbox = FrameInbox()
    inbox.register("v", depth=1)
    inbox.decode_plan = plan  # type: ignore[assignment]
    cam = CameraSource(CameraOptions("v", str(video)), inbox)
    cam.start()
    frames: dict[int, np.ndarray] = {}
    deadline = time.monotonic() + 60
    try:
        while cam.state != "ended" or inbox.pending():
            assert time.monotonic() < deadline, "the file was not read to its end"
            frame: Frame | None = inbox.take(0.05)
            if frame is not None:
                frames[frame.index] = frame.data
    finally:
        cam.stop()
    return frames


@pytest.mark.parametrize(("size", "factor"), [(112, 4), (448, 8)])
def test_reduced_decode_gives_the_same_labels_on_the_reference_video(
        tmp_path: Path, size: int, factor: int) -> None:
    video = tmp_path / "digits.avi"
    truth = write_digits_video(video, fps=30, size=size)
    manifest = load_manifest(DATA / "digits_cnn.json")
    model = build_loaded_model(manifest, DATA, Engine(manifest.model_path(DATA)), 1, 0.0)
    assert isinstance(model.pre, FramePreprocessor)
    assert model.pre.decode_plan(size, size) == (factor, True)
    full = read_all(video, None)
    reduced = read_all(video, model.pre.decode_plan)
    assert sorted(full) == sorted(reduced) == list(range(len(truth)))
    assert full[0].shape == (size, size, 3)
    assert reduced[0].shape == (size // factor, size // factor)  # luma only, reduced

    def top1(img: np.ndarray) -> str:
        return model.post(model.engine.invoke(model.pre(img)))[0].label

    before = [top1(full[i]) for i in range(len(truth))]
    after = [top1(reduced[i]) for i in range(len(truth))]
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    assert changed <= len(truth) // 100, f"{changed} of {len(truth)} labels changed"
    correct = sum(a == t for a, t in zip(after, truth, strict=True))
    assert correct / len(truth) >= 0.95


def test_colour_model_plan_keeps_the_input_at_least_model_size() -> None:
    spec = load_manifest(DATA / "digits_cnn.json").input.model_copy(
        update={"shape": [1, 224, 224, 3], "color": "rgb"})
    pre = FramePreprocessor(spec)
    assert pre.decode_plan(640, 480) == (2, False)  # 320x240 still covers 224x224
    assert pre.decode_plan(320, 240) == (1, False)
    crop = FramePreprocessor(spec.model_copy(update={"resize": "center_crop"}))
    assert crop.decode_plan(1920, 1080) == (4, False)  # 1080 crop / 4 = 270 >= 224


def test_a_source_that_is_not_mjpeg_decodes_as_before(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"XVID"), 30, (160, 120))
    if not writer.isOpened():
        pytest.skip("no XVID encoder in this OpenCV build")
    for i in range(5):
        writer.write(np.full((120, 160, 3), 40 * i, np.uint8))
    writer.release()
    spec = load_manifest(DATA / "digits_cnn.json").input
    frames = read_all(path, FramePreprocessor(spec).decode_plan)
    assert len(frames) == 5 and frames[0].shape == (120, 160, 3)


def test_four_sources_into_one_model_every_frame_of_each_served_in_order(
        tmp_path: Path) -> None:
    from agent.inference.pipeline import Pipeline
    from agent.records import Result
    from tests.support.videos import write_numbered_video

    manifest = load_manifest(DATA / "digits_cnn.json")
    model = build_loaded_model(manifest, DATA, Engine(manifest.model_path(DATA)), 1, 0.0)
    inbox = FrameInbox()
    results: list[Result] = []
    pipeline = Pipeline(model, inbox, results.append, max_frame_age_ms=60_000)
    names = [f"cam{i}" for i in range(4)]
    cams = []
    for i, name in enumerate(names):
        inbox.register(name, depth=1)
        video = write_numbered_video(tmp_path / f"{name}.avi", 20 + 5 * i, fps=30)
        cams.append(CameraSource(CameraOptions(name, str(video)), inbox))
    pipeline.start()
    for cam in cams:
        cam.start()
    try:
        deadline = time.monotonic() + 60
        while len(results) < sum(20 + 5 * i for i in range(4)):
            assert time.monotonic() < deadline, f"{len(results)} labels"
            time.sleep(0.01)
    finally:
        for cam in cams:
            cam.stop()
        pipeline.stop()
    for i, name in enumerate(names):
        assert [r.frame_index for r in results if r.source == name] == list(range(20 + 5 * i))
    records = pipeline.source_records()
    assert sorted(records) == names
    assert [records[n].inferences for n in names] == [20, 25, 30, 35]
    assert all(records[n].dropped == 0 and records[n].capture_to_publish_ms_p99 for n in names)
