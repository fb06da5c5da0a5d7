"""The frame inbox: bounded per stream name, round robin across sources, order kept."""

from __future__ import annotations

import logging
import time
import tracemalloc

import numpy as np
import pytest

from agent.capture.inbox import FrameInbox, StreamIndex
from agent.capture.samples import SequenceWindower
from agent.manifest import WindowSpec
from agent.records import Frame

WINDOW = np.zeros((4, 3), np.float32)


def window_frame(stream: str, index: int = 0) -> Frame:
    return Frame(stream, index, time.time(), time.monotonic(), WINDOW)


def test_forty_thousand_stream_names_keep_the_inbox_bounded() -> None:
    inbox = FrameInbox(default_depth=32, max_streams=64)
    for i in range(2_000):  # warm up: allocator pools, the bound reached
        inbox.put(window_frame(f"s{i}"))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(40_000):
        inbox.put(window_frame(f"n{i}"))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert inbox.streams == 64
    assert inbox.evictions.total == 2_000 - 64 + 40_000
    assert inbox.evicted_frames == inbox.evictions.total  # each evicted name held one window
    assert grown < 1_000_000  # unbounded, it grows by about 40,000 deques (tens of MB)
    assert inbox.pending() == 64


def test_a_registered_camera_is_never_evicted() -> None:
    inbox = FrameInbox(max_streams=2)
    inbox.register("cam")
    inbox.put(window_frame("cam"))
    for i in range(10):
        inbox.put(window_frame(f"s{i}"))
    assert inbox.streams == 2
    assert "cam" in inbox.source_counts()
    frames = [inbox.take(0.01) for _ in range(3)]
    assert [f.source for f in frames if f] == ["cam", "s8", "s9"]


def test_evictions_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    inbox = FrameInbox(max_streams=4, log_interval_s=3600)
    windower = SequenceWindower(WindowSpec(length=4, stride=4, features=3), max_streams=4)
    with caplog.at_level(logging.WARNING):
        for i in range(1_000):
            inbox.put(window_frame(f"s{i}"))
            windower.add(f"s{i}", b"[1, 2, 3]")
    assert windower.evicted == 996 and inbox.evictions.total == 996
    evictions = [r for r in caplog.records if "evicted" in r.getMessage()]
    assert len(evictions) == 2  # one summary each, not 996 lines each


def test_stream_index_counts_per_name_and_forgets_the_idle_ones() -> None:
    counts = StreamIndex(max_streams=3)
    assert [counts.next("a"), counts.next("a"), counts.next("b")] == [0, 1, 0]
    for i in range(40_000):
        counts.next(f"x{i}")
    assert len(counts) == 3
    assert counts.next("a") == 0  # forgotten, restarts


def test_sources_are_served_round_robin_and_in_order() -> None:
    inbox = FrameInbox(default_depth=8)
    for i in range(3):
        for name in ("a", "b", "c"):
            inbox.put(window_frame(name, i))
    taken = [inbox.take(0.01) for _ in range(9)]
    assert [(f.source, f.index) for f in taken if f] == [
        ("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1),
        ("a", 2), ("b", 2), ("c", 2)]
    assert inbox.take(0.0) is None


def test_a_frame_put_back_is_served_next_for_its_source() -> None:
    inbox = FrameInbox(default_depth=4)
    for i in range(2):
        inbox.put(window_frame("a", i))
    first = inbox.take(0.01)
    assert first is not None
    inbox.put_back(first)
    assert [inbox.take(0.01).index for _ in range(2)] == [0, 1]  # type: ignore[union-attr]
    counts = inbox.source_counts(registered_only=False)["a"]
    assert (counts.put, counts.taken, counts.overwritten) == (2, 2, 0)
