"""Capture against real things: video files written by OpenCV and a real HTTP MJPEG server.

Only the V4L2 device is faked (there is no camera here), through ``capture_factory``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.camera import CameraSource
from agent.capture.inbox import FrameInbox
from agent.capture.sources import CameraOptions, redact_uri, source_kind
from agent.errors import SourceError
from agent.records import Frame
from tests.support.mjpeg_server import MjpegServer
from tests.support.videos import frame_number, numbered_frame, numbered_frames, write_numbered_video

FAST = {"open_timeout_ms": 600, "read_timeout_ms": 500, "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2}


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class RecordingSlot(FrameInbox):
    """The agent's inbox, also keeping every frame put, so a test can see what a fast consumer
    would."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []

    def put(self, frame: Frame) -> None:
        self.frames.append(frame)
        super().put(frame)

    @property
    def latest(self) -> Frame | None:
        """The last frame put, read or not."""
        return self.frames[-1] if self.frames else None

    def wait_taken(self, source: str, timeout: float) -> bool:
        """Never holds a file back: every frame counts as seen once recorded."""
        return True


class States:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()

    def __call__(self, name: str, state: str, reason: str | None) -> None:
        with self._lock:
            self.events.append((name, state, reason))

    @property
    def states(self) -> list[str]:
        with self._lock:
            return [e[1] for e in self.events]


@pytest.fixture
def sources() -> Iterator[list[CameraSource]]:
    started: list[CameraSource] = []
    yield started
    for src in started:
        src.stop(timeout=3)


@pytest.fixture
def server() -> Iterator[MjpegServer]:
    srv = MjpegServer(numbered_frames(200), fps=40).start()
    yield srv
    srv.stop()


def run(sources: list[CameraSource], opts: CameraOptions, slot: FrameInbox | None = None,
        **kw: object) -> tuple[CameraSource, FrameInbox, States]:
    slot = slot if slot is not None else RecordingSlot()
    states = States()
    src = CameraSource(opts, slot, on_state=states, **kw)  # type: ignore[arg-type]
    sources.append(src)
    src.start()
    return src, slot, states


# -- the inbox as a latest-frame slot -------------------------------------------------


def frame(i: int) -> Frame:
    return Frame(source="t", index=i, ts=time.time(), mono=time.monotonic(), data=np.zeros(1))


def test_slot_keeps_the_newest_frame_and_counts_overwrites() -> None:
    slot = RecordingSlot()
    for i in range(3):
        slot.put(frame(i))
    got = slot.take(timeout=0.1)
    assert got is not None and got.index == 2
    assert slot.overwritten == 2 and slot.put_count == 3
    assert slot.take(timeout=0.05) is None
    assert slot.latest is got


def test_slot_get_wakes_on_put_and_on_close() -> None:
    slot = FrameInbox()
    results: list[Frame | None] = []
    waiter = threading.Thread(target=lambda: results.append(slot.take(timeout=10)))
    waiter.start()
    slot.put(frame(7))
    waiter.join(timeout=2)
    assert results[0] is not None and results[0].index == 7

    waiter = threading.Thread(target=lambda: results.append(slot.take(timeout=10)))
    waiter.start()
    assert wait_for(lambda: waiter.is_alive())
    slot.close()
    waiter.join(timeout=2)
    assert not waiter.is_alive() and results[1] is None and slot.closed
    slot.put(frame(8))
    unread = slot.take(timeout=5)
    assert unread is not None and unread.index == 8, "an unread frame is still handed out"
    t0 = time.monotonic()
    assert slot.take(timeout=5) is None and time.monotonic() - t0 < 1


# -- files ----------------------------------------------------------------------------


def test_file_is_read_in_order_with_its_frame_numbers(tmp_path: Path,
                                                      sources: list[CameraSource]) -> None:
    path = write_numbered_video(tmp_path / "v.avi", 25, fps=30)
    src, slot, states = run(sources, CameraOptions("f", str(path)))
    assert wait_for(lambda: src.state == "ended")
    frames = slot.frames  # type: ignore[attr-defined]
    assert [f.index for f in frames] == list(range(25))
    assert [frame_number(f.data) for f in frames] == list(range(25))
    assert all(f.source == "f" and f.data.dtype == np.uint8 and f.data.shape == (120, 160, 3)
               for f in frames)
    assert not frames[0].data.flags.writeable
    assert states.states == ["ok", "ended"]
    assert src.waiting_legitimately and src.frames_read == 25 and src.reconnects == 0


def test_file_loops_with_indices_restarting(tmp_path: Path, sources: list[CameraSource]) -> None:
    path = write_numbered_video(tmp_path / "v.avi", 10, fps=30)
    src, slot, _ = run(sources, CameraOptions("f", str(path), loop=True))
    assert wait_for(lambda: len(slot.frames) >= 35)  # type: ignore[attr-defined]
    src.stop()
    frames = slot.frames[:35]  # type: ignore[attr-defined]
    assert [f.index for f in frames] == [i % 10 for i in range(35)]
    assert [frame_number(f.data) for f in frames] == [i % 10 for i in range(35)]
    assert src.loops >= 3 and src.state == "ok"


def test_realtime_file_is_paced_at_its_fps(tmp_path: Path, sources: list[CameraSource]) -> None:
    path = write_numbered_video(tmp_path / "v.avi", 12, fps=20)
    t0 = time.monotonic()
    src, slot, _ = run(sources, CameraOptions("f", str(path), realtime=True))
    assert wait_for(lambda: src.frames_emitted >= 2)
    assert src.frames_emitted < 12, "a paced 0.6 s file must not be read at once"
    assert wait_for(lambda: src.state == "ended")
    assert time.monotonic() - t0 >= 0.45
    assert [f.index for f in slot.frames] == list(range(12))  # type: ignore[attr-defined]


def test_target_fps_drops_to_at_most_that_rate(tmp_path: Path,
                                               sources: list[CameraSource]) -> None:
    path = write_numbered_video(tmp_path / "v.avi", 45, fps=30)
    t0 = time.monotonic()
    src, slot, _ = run(sources, CameraOptions("f", str(path), realtime=True, target_fps=10))
    assert wait_for(lambda: src.state == "ended")
    elapsed = time.monotonic() - t0
    emitted = src.frames_emitted
    assert 5 <= emitted <= elapsed * 10 + 2
    assert src.frames_skipped == 45 - emitted
    indices = [f.index for f in slot.frames]  # type: ignore[attr-defined]
    assert indices == sorted(indices) and indices[0] == 0
    assert [frame_number(f.data) for f in slot.frames] == indices  # type: ignore[attr-defined]


def test_slot_drops_and_counts_when_nobody_reads(tmp_path: Path,
                                                 sources: list[CameraSource]) -> None:
    path = write_numbered_video(tmp_path / "v.avi", 60, fps=30)
    slot = RecordingSlot()
    src, _, _ = run(sources, CameraOptions("f", str(path)), slot=slot)
    assert wait_for(lambda: src.state == "ended")
    assert slot.put_count == 60 and slot.overwritten == 59
    last = slot.take(timeout=0.1)
    assert last is not None and last.index == 59 and frame_number(last.data) == 59


def test_missing_file_is_lost_and_retried_without_crashing(tmp_path: Path,
                                                           sources: list[CameraSource]) -> None:
    opts = CameraOptions("f", str(tmp_path / "nope.avi"), **FAST)  # type: ignore[arg-type]
    src, _, states = run(sources, opts)
    assert wait_for(lambda: src.reconnects >= 2)
    assert states.events[0][1] == "lost" and "no such file" in (states.events[0][2] or "")
    assert src.running and src.stop(timeout=2)


def test_a_file_that_is_not_a_video_is_reported(tmp_path: Path,
                                                 sources: list[CameraSource]) -> None:
    path = tmp_path / "notes.avi"
    path.write_bytes(b"this is not a video\n" * 50)
    src, _, states = run(sources, CameraOptions("f", str(path), **FAST))  # type: ignore[arg-type]
    assert wait_for(lambda: src.reconnects >= 1)
    assert states.events[0][1] == "lost" and "cannot open file" in (states.events[0][2] or "")


def test_a_factory_that_raises_does_not_kill_the_thread(sources: list[CameraSource]) -> None:
    calls = []

    def factory(target: str | int, api: int, params: Sequence[int]) -> FakeDevice:
        calls.append(target)
        if len(calls) == 1:
            raise OSError("device busy")
        return FakeDevice(opened=True, frames=[numbered_frame(0)])

    src, _, states = run(sources, CameraOptions("usb", 0, **FAST),  # type: ignore[arg-type]
                         capture_factory=factory)
    assert wait_for(lambda: src.frames_emitted == 1)
    assert states.events[0][1:] == ("lost", "cannot open: OSError: device busy")


def test_file_that_appears_later_is_picked_up(tmp_path: Path, sources: list[CameraSource]) -> None:
    path = tmp_path / "later.avi"
    src, slot, states = run(sources, CameraOptions("f", str(path), **FAST))  # type: ignore[arg-type]
    assert wait_for(lambda: src.state == "lost")
    write_numbered_video(tmp_path / "tmp.avi", 5, fps=30).rename(path)
    assert wait_for(lambda: src.state == "ended")
    assert states.states == ["lost", "ok", "ended"] and len(slot.frames) == 5  # type: ignore[attr-defined]


# -- HTTP MJPEG -------------------------------------------------------------------------


def test_mjpeg_stream_is_read(server: MjpegServer, sources: list[CameraSource]) -> None:
    src, slot, states = run(sources, CameraOptions("cam", server.url, **FAST))  # type: ignore[arg-type]
    assert wait_for(lambda: len(slot.frames) >= 10)  # type: ignore[attr-defined]
    frames = slot.frames[:10]  # type: ignore[attr-defined]
    assert [f.index for f in frames] == list(range(10))
    numbers = [frame_number(f.data) for f in frames]
    assert numbers == list(range(numbers[0], numbers[0] + 10))
    assert states.states == ["ok"] and src.corrupt_frames == 0


def test_stalled_stream_is_detected_and_reconnected(server: MjpegServer,
                                                    sources: list[CameraSource]) -> None:
    src, slot, states = run(sources, CameraOptions("cam", server.url, **FAST))  # type: ignore[arg-type]
    assert wait_for(lambda: src.state == "ok")
    server.stall()
    assert wait_for(lambda: src.state == "lost", timeout=5)
    lost_reason = states.events[-1][2] or ""
    assert "no frame" in lost_reason
    stalled_at = src.frames_emitted
    server.resume()
    assert wait_for(lambda: src.state == "ok" and src.frames_emitted > stalled_at + 5, timeout=8)
    assert states.states == ["ok", "lost", "ok"]
    assert src.reconnects >= 1
    indices = [f.index for f in slot.frames]  # type: ignore[attr-defined]
    assert indices == list(range(len(indices))), "live indices keep counting across reconnects"


def test_server_that_disappears_is_retried_with_backoff(server: MjpegServer,
                                                        sources: list[CameraSource]) -> None:
    src, _, states = run(sources, CameraOptions("cam", server.url, **FAST))  # type: ignore[arg-type]
    assert wait_for(lambda: src.state == "ok")
    server.go_away()
    assert wait_for(lambda: src.state == "lost")
    t0, before = time.monotonic(), src.reconnects
    assert wait_for(lambda: src.reconnects >= before + 3)
    rate = (src.reconnects - before) / (time.monotonic() - t0)
    assert rate < 1 / FAST["reconnect_min_s"] + 5, "reconnects must back off, not spin"
    assert src.running
    server.come_back()
    assert wait_for(lambda: src.state == "ok", timeout=5)
    assert states.states == ["ok", "lost", "ok"]


def test_dropped_connection_is_reopened(server: MjpegServer, sources: list[CameraSource]) -> None:
    src, _, states = run(sources, CameraOptions("cam", server.url, **FAST))  # type: ignore[arg-type]
    assert wait_for(lambda: src.state == "ok")
    connections = server.connections
    server.drop()
    assert wait_for(lambda: server.connections > connections and src.state == "ok"
                    and states.states == ["ok", "lost", "ok"])


def test_corrupt_parts_are_counted_and_skipped(server: MjpegServer,
                                               sources: list[CameraSource]) -> None:
    src, _, states = run(sources, CameraOptions("cam", server.url, **FAST))  # type: ignore[arg-type]
    assert wait_for(lambda: src.frames_emitted >= 3)
    server.corrupt_next(2)
    assert wait_for(lambda: server.corrupt_sent == 2)
    emitted = src.frames_emitted
    assert wait_for(lambda: src.frames_emitted >= emitted + 5)
    assert src.corrupt_frames == 2
    assert states.states == ["ok"]


# -- a fake V4L2 device -----------------------------------------------------------------


class FakeDevice:
    """Stands in for ``cv2.VideoCapture`` on a V4L2 device: scripted frames, then unplugged."""

    def __init__(self, opened: bool, frames: Sequence[np.ndarray | None] = ()) -> None:
        self.opened = opened
        self.frames = list(frames)
        self.settings: dict[int, float] = {}
        self.released = False

    def isOpened(self) -> bool:
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        if not self.frames:
            return False, None
        return True, self.frames.pop(0)

    def grab(self) -> bool:
        return bool(self.frames) and self.frames.pop(0) is not None

    def set(self, prop: int, value: float) -> bool:
        self.settings[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.settings.get(prop, 0.0)

    def release(self) -> None:
        self.released = True


class FakeFactory:
    def __init__(self, devices: list[FakeDevice]) -> None:
        self.devices = devices
        self.calls: list[tuple[str | int, int, list[int]]] = []

    def __call__(self, target: str | int, api: int, params: Sequence[int]) -> FakeDevice:
        self.calls.append((target, api, list(params)))
        return self.devices.pop(0) if self.devices else FakeDevice(opened=False)


def test_fake_v4l2_device_fails_to_open_then_delivers(sources: list[CameraSource]) -> None:
    good = [numbered_frame(i) for i in range(5)]
    script: list[np.ndarray | None] = [good[0], None, np.zeros((120, 160), np.uint8), *good[1:]]
    device = FakeDevice(opened=True, frames=script)
    factory = FakeFactory([FakeDevice(opened=False), FakeDevice(opened=False), device])
    opts = CameraOptions("usb", "0", width=640, height=480, fourcc="MJPG", **FAST)  # type: ignore[arg-type]
    src, slot, states = run(sources, opts, capture_factory=factory)
    assert wait_for(lambda: len(slot.frames) >= 5)  # type: ignore[attr-defined]
    assert factory.calls[0] == (0, cv2.CAP_V4L2, [])
    assert device.settings[cv2.CAP_PROP_FRAME_WIDTH] == 640
    assert device.settings[cv2.CAP_PROP_FRAME_HEIGHT] == 480
    assert device.settings[cv2.CAP_PROP_FOURCC] == cv2.VideoWriter_fourcc(*"MJPG")
    assert [frame_number(f.data) for f in slot.frames] == list(range(5))  # type: ignore[attr-defined]
    assert src.corrupt_frames == 2 and src.reconnects >= 2
    assert states.states[:2] == ["lost", "ok"]
    assert "cannot open device 0" in (states.events[0][2] or "")
    assert wait_for(lambda: device.released and src.state == "lost"), "unplugged -> lost"


def test_odd_sized_frames_are_skipped_and_a_new_size_is_adopted(
        sources: list[CameraSource]) -> None:
    """FFmpeg rescales odd-sized MJPEG parts to the stream's size, so only a device can do this."""
    small = np.zeros((60, 80, 3), np.uint8)
    script = [numbered_frame(i) for i in range(3)] + [small] + [numbered_frame(3)] + [small] * 4
    device = FakeDevice(opened=True, frames=script)
    src, slot, _ = run(sources, CameraOptions("usb", 0, **FAST),  # type: ignore[arg-type]
                       capture_factory=FakeFactory([device]))
    assert wait_for(lambda: src.state == "lost")
    shapes = [f.data.shape[:2] for f in slot.frames]  # type: ignore[attr-defined]
    assert shapes == [(120, 160)] * 4 + [(60, 80)] * 2
    assert src.corrupt_frames == 3


def test_device_path_and_a_failing_callback(sources: list[CameraSource]) -> None:
    def explode(name: str, state: str, reason: str | None) -> None:
        raise RuntimeError("callback bug")

    factory = FakeFactory([FakeDevice(opened=True, frames=[numbered_frame(1)] * 3)])
    slot = FrameInbox()
    src = CameraSource(CameraOptions("usb", "/dev/video2", **FAST), slot,  # type: ignore[arg-type]
                       on_state=explode, capture_factory=factory)
    sources.append(src)
    src.start()
    assert wait_for(lambda: src.frames_emitted == 3 and src.reconnects >= 1)
    assert factory.calls[0][:2] == ("/dev/video2", cv2.CAP_V4L2) and src.running


def test_stop_during_backoff_is_prompt(sources: list[CameraSource]) -> None:
    opts = CameraOptions("usb", 0, reconnect_min_s=5, reconnect_max_s=10)
    src, _, _ = run(sources, opts, capture_factory=FakeFactory([]))
    assert wait_for(lambda: src.waiting_legitimately)
    t0 = time.monotonic()
    assert src.stop(timeout=2) and time.monotonic() - t0 < 1


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "kind"), [
    (0, "device"), ("2", "device"), ("/dev/video1", "device"), ("clip.avi", "file"),
    ("/data/clip.mp4", "file"), ("rtsp://cam/stream", "stream"),
    ("http://127.0.0.1:8080/x.mjpg", "stream"), ("HTTPS://cam/x", "stream"),
])
def test_source_kinds(uri: str | int, kind: str) -> None:
    assert source_kind(uri) == kind


@pytest.mark.parametrize(("kw", "message"), [
    ({"uri": ""}, "non-empty"),
    ({"uri": -1}, "device index must be >= 0"),
    ({"uri": "ftp://x/y"}, "unsupported URL scheme 'ftp'"),
    ({"target_fps": 0}, "target_fps must be > 0"),
    ({"read_timeout_ms": 0}, "read_timeout_ms must be > 0"),
    ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_min_s <= reconnect_max_s"),
    ({"fourcc": "MJPEG"}, "fourcc must be 4 characters"),
    ({"width": -5}, "width must be > 0"),
])
def test_bad_options_are_refused_with_a_reason(kw: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"name": "cam", "uri": "clip.avi", **kw}
    with pytest.raises(SourceError, match="camera source 'cam': .*" + _re(message)):
        CameraOptions(**args)  # type: ignore[arg-type]


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_passwords_are_masked() -> None:
    assert redact_uri("rtsp://admin:s3cret@cam:554/live") == "rtsp://admin:***@cam:554/live"
    opts = CameraOptions("c", "rtsp://u:p@h/x")
    assert opts.display_uri == "rtsp://u:***@h/x" and ":p@" not in repr(opts)
    assert redact_uri("http://cam/x.mjpg") == "http://cam/x.mjpg"


def test_start_twice_is_refused(tmp_path: Path, sources: list[CameraSource]) -> None:
    path = write_numbered_video(tmp_path / "v.avi", 2, fps=30)
    src, _, _ = run(sources, CameraOptions("f", str(path)))
    with pytest.raises(SourceError, match="already started"):
        src.start()


def test_file_at_full_speed_waits_for_the_agents_inbox(tmp_path: Path,
                                                      sources: list[CameraSource]) -> None:
    path = write_numbered_video(tmp_path / "v.avi", 30, fps=30)
    inbox = FrameInbox()
    run(sources, CameraOptions("f", str(path)), slot=inbox)
    taken = []
    deadline = time.monotonic() + 10
    while len(taken) < 30 and time.monotonic() < deadline:
        f = inbox.take(0.1)
        if f is not None:
            taken.append(f.index)
    assert taken == list(range(30)) and inbox.overwritten == 0
