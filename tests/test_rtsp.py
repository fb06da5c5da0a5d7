"""The camera source on a real RTSP stream over loopback.

No RTSP server exists here, so OpenCV's FFmpeg listens (``rtsp_flags;listen``, set through
``OPENCV_FFMPEG_CAPTURE_OPTIONS`` before the source opens: OpenCV reads it at open time) and
a PyAV subprocess pushes numbered MPEG-4 frames to it (``tests.support.rtsp``). The agent's
own open path is used unchanged: ``cv2.VideoCapture(url, CAP_FFMPEG, [open/read timeouts])``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.capture.camera import CameraSource
from agent.capture.sources import CameraOptions
from tests.support.rtsp import RtspPusher, free_port, listen_options, poke_listener
from tests.support.videos import frame_number
from tests.test_capture import RecordingSlot, States, wait_for

pytest.importorskip("av")

OPTS = {"open_timeout_ms": 5000, "read_timeout_ms": 2000, "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2}


@pytest.fixture
def url(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", listen_options())
    return f"rtsp://127.0.0.1:{free_port()}/live"


@pytest.fixture
def pushers() -> Iterator[list[RtspPusher]]:
    started: list[RtspPusher] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
def camera(url: str) -> Iterator[tuple[CameraSource, RecordingSlot, States]]:
    slot, states = RecordingSlot(), States()
    src = CameraSource(CameraOptions("door", url, **OPTS), slot,  # type: ignore[arg-type]
                       on_state=states)
    src.start()
    yield src, slot, states
    src.stop(timeout=0)
    for _ in range(60):  # a source waiting for a pusher would otherwise sit out its open timeout
        poke_listener(url)
        if src.stop(timeout=0.1):
            break
    assert not src.running


def push(pushers: list[RtspPusher], url: str, **kw: object) -> RtspPusher:
    pusher = RtspPusher(url, **kw).start()  # type: ignore[arg-type]
    pushers.append(pusher)
    return pusher


def numbers(slot: RecordingSlot) -> list[int]:
    return [frame_number(f.data) for f in slot.frames]


def test_rtsp_frames_arrive_in_order(url: str, camera: tuple[CameraSource, RecordingSlot, States],
                                     pushers: list[RtspPusher]) -> None:
    src, slot, states = camera
    pusher = push(pushers, url, count=40, fps=25)
    assert pusher.connected.wait(8), pusher.lines
    assert wait_for(lambda: len(slot.frames) >= 40, timeout=8), (len(slot.frames), pusher.lines)
    assert pusher.wait(5) == 0, pusher.lines
    assert numbers(slot)[:40] == list(range(40))
    assert [f.index for f in slot.frames[:40]] == list(range(40))
    assert all(f.data.shape == (120, 160, 3) and f.source == "door" for f in slot.frames)
    assert states.states[0] == "ok" and src.corrupt_frames == 0
    latest = slot.latest
    assert latest is not None and frame_number(latest.data) == 39


def test_rtsp_pusher_gone_is_lost_then_a_new_one_is_read(
        url: str, camera: tuple[CameraSource, RecordingSlot, States],
        pushers: list[RtspPusher]) -> None:
    src, slot, states = camera
    first = push(pushers, url, fps=25)
    assert wait_for(lambda: src.state == "ok" and len(slot.frames) >= 10, timeout=8), first.lines
    first.kill()  # the camera vanishes without a TEARDOWN
    assert wait_for(lambda: src.state == "lost", timeout=5)
    before = len(slot.frames)
    second = push(pushers, url, first=1000, count=30, fps=25)
    assert wait_for(lambda: len(slot.frames) >= before + 30, timeout=10), second.lines
    assert states.states[:3] == ["ok", "lost", "ok"]
    assert src.reconnects >= 1
    got = numbers(slot)
    assert got[:before] == list(range(before)), "the first session arrived in order"
    assert got[before:before + 30] == list(range(1000, 1030)), "the new session from its start"
    assert [f.index for f in slot.frames] == list(range(len(slot.frames)))
    second.wait(5)
    assert wait_for(lambda: src.state == "lost", timeout=5), "a clean TEARDOWN is a loss too"
