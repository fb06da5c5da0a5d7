from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import OutboxConfig
from agent.mqtt.inflight import InflightWindow
from agent.mqtt.outbox import Outbox
from tests.support.disk import SmallFilesystem, disk_faults_available, set_immutable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def outbox(tmp_path: Path):
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


def test_put_peek_in_order(outbox: Outbox) -> None:
    ids = [outbox.put("t/a", f"m{i}".encode(), qos=1) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    items = outbox.peek(10)
    assert [i.payload for i in items] == [f"m{i}".encode() for i in range(5)]
    assert [i.id for i in outbox.peek(2, after_id=ids[1])] == ids[2:4]
    assert items[0].topic == "t/a" and items[0].qos == 1 and items[0].retain is False
    assert outbox.depth == 5


def test_ack_removes_only_that_message(outbox: Outbox) -> None:
    ids = [outbox.put("t", bytes([i])) for i in range(4)]
    outbox.ack(ids[1])
    outbox.ack_many([ids[3], 999_999])
    assert [i.id for i in outbox.peek(10)] == [ids[0], ids[2]]
    assert outbox.depth == 2
    outbox.ack(ids[1])
    assert outbox.depth == 2


def test_ids_keep_growing_after_the_queue_empties(outbox: Outbox) -> None:
    first = outbox.put("t", b"a")
    outbox.ack(first)
    assert outbox.depth == 0
    assert outbox.put("t", b"b") > first


def test_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", OutboxConfig(max_messages=3)) as box:
        for i in range(5):
            box.put("t", str(i).encode())
        assert [i.payload for i in box.peek(10)] == [b"2", b"3", b"4"]
        assert box.depth == 3 and box.dropped == 2


def test_byte_cap_drops_oldest(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=250) as box:
        for i in range(4):
            box.put("t", bytes([i]) * 100)
        assert [i.payload[0] for i in box.peek(10)] == [2, 3]
        assert box.size_bytes == 200 and box.dropped == 2


def test_expire_drops_old_messages(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", OutboxConfig(max_age_s=60)) as box:
        box.put("t", b"old")
        assert box.expire(now=time.time() + 30) == 0
        assert box.expire(now=time.time() + 61) == 1
        assert box.depth == 0 and box.dropped == 1 and box.expired == 1


def test_set_aside_moves_to_bounded_dead_letters(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_dead_letters=2) as box:
        ids = [box.put("t", bytes([i])) for i in range(4)]
        for i in ids[:3]:
            assert box.set_aside(i, "Not authorized")
        assert not box.set_aside(12345, "unknown")
        assert box.depth == 1 and box.set_aside_count == 2
        dead = box.dead_letters()
        assert [d.item.id for d in dead] == ids[1:3]
        assert dead[0].reason == "Not authorized"


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, OutboxConfig(max_messages=10)) as box:
        ids = [box.put("t", bytes([i])) for i in range(3)]
        box.ack(ids[0])
    with Outbox(path, OutboxConfig(max_messages=10)) as box:
        assert [i.id for i in box.peek(10)] == ids[1:]
        assert box.depth == 2 and box.put("t", b"x") > ids[-1]


WRITER = """
import sys
from agent.mqtt.outbox import Outbox
from tests.support.disk import SmallFilesystem, disk_faults_available, set_immutable
box = Outbox(sys.argv[1])
i = 0
while True:
    box.put("t", str(i).encode())
    i += 1
    if i == 200:
        print("ready", flush=True)
"""


def test_put_survives_sigkill_of_writer(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    with Outbox(path) as box:
        payloads = [int(i.payload) for i in box.peek(1_000_000)]
        assert len(payloads) >= 200
        assert payloads == list(range(len(payloads)))
        assert box.depth == len(payloads)


def test_memory_mode_has_the_same_api() -> None:
    box = Outbox.disabled(OutboxConfig(max_messages=2))
    assert not box.durable
    for i in range(3):
        box.put("t", bytes([i]))
    assert box.depth == 2 and box.dropped == 1
    box.ack(box.peek(1)[0].id)
    assert box.depth == 1
    box.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "ack", "aside"]), st.integers(0, 20)),
                max_size=60))
def test_behaves_like_a_bounded_ordered_list(ops: list[tuple[str, int]]) -> None:
    box = Outbox.disabled(OutboxConfig(max_messages=8))
    model: list[int] = []
    dropped = 0
    for op, n in ops:
        if op == "put":
            model.append(box.put("t", bytes([n])))
            if len(model) > 8:
                model.pop(0)
                dropped += 1
        elif model:
            target = model[n % len(model)]
            (box.ack(target) if op == "ack" else box.set_aside(target, "x"))
            model.remove(target)
        assert [i.id for i in box.peek(100)] == model
        assert box.depth == len(model) and box.dropped == dropped
    box.close()


# --------------------------------------------------------------------------- InflightWindow


def fill(box: Outbox, n: int) -> list[int]:
    return [box.put("t", bytes([i])) for i in range(n)]


def test_window_sends_in_order_within_the_window() -> None:
    box = Outbox.disabled()
    ids = fill(box, 5)
    window = InflightWindow(box, max_inflight=2, drain_rate_per_s=0)
    gen = window.open()
    batch = window.next_batch(gen)
    assert [i.id for i in batch] == ids[:2]
    for mid, item in enumerate(batch, start=1):
        window.sent(gen, item.id, mid)
    assert window.next_batch(gen) == []
    window.acked(gen, 1)
    window.settle()
    assert [i.id for i in window.next_batch(gen)] == [ids[2]]
    assert box.depth == 4 and window.delivered == 1


def test_window_ack_before_sent_and_direct_publishes() -> None:
    box = Outbox.disabled()
    ids = fill(box, 2)
    window = InflightWindow(box, max_inflight=100, drain_rate_per_s=0)
    gen = window.open()
    window.acked(gen, 7)  # the PUBACK beat ``sent``
    window.sent(gen, ids[0], 7)
    window.acked(gen, 8)  # a direct publish, acked early
    window.direct(gen, 8)
    window.direct(gen, 9)
    window.acked(gen, 9)
    window.settle()
    assert [i.id for i in box.peek(10)] == [ids[1]] and window.inflight == 0


def test_window_refusal_sets_aside_and_resend_after_reconnect() -> None:
    box = Outbox.disabled()
    ids = fill(box, 3)
    window = InflightWindow(box, max_inflight=100, drain_rate_per_s=0)
    gen = window.open()
    for mid, item in enumerate(window.next_batch(gen), start=1):
        window.sent(gen, item.id, mid)
    window.acked(gen, 1, "broker refused: Not authorized (135)")
    window.close()
    window.settle()
    assert box.set_aside_count == 1 and box.depth == 2
    gen2 = window.open()
    window.acked(gen, 2)  # an ack for the old connection is ignored after a new open
    assert [i.id for i in window.next_batch(gen2)] == [ids[1]]  # slow start: window 1
    window.sent(gen2, ids[1], 1)
    window.acked(gen2, 1)
    assert [i.id for i in window.next_batch(gen2)] == [ids[2]]


def test_window_sets_aside_a_message_that_kills_every_connection() -> None:
    box = Outbox.disabled()
    ids = fill(box, 2)
    window = InflightWindow(box, max_inflight=100, drain_rate_per_s=0, max_strikes=3)
    for _ in range(3):
        gen = window.open()
        item = window.next_batch(gen)[0]
        assert item.id == ids[0]
        window.sent(gen, item.id, 1)
        window.close()
        window.settle()
    assert [d.item.id for d in box.dead_letters()] == [ids[0]]
    gen = window.open()
    assert [i.id for i in window.next_batch(gen)] == [ids[1]]


def test_window_paces_only_the_backlog() -> None:
    box = Outbox.disabled()
    fill(box, 50)
    window = InflightWindow(box, max_inflight=100, drain_rate_per_s=10)
    gen = window.open()
    assert len(window.next_batch(gen)) <= 2  # burst of 0.2 s at 10/s
    paced = InflightWindow(box, max_inflight=100, drain_rate_per_s=0)
    assert len(paced.next_batch(paced.open())) == 50
    box.ack_many(i.id for i in box.peek(100))
    gen = window.open()
    fill(box, 20)  # put after the connection came up: not paced
    assert len(window.next_batch(gen)) == 20


# --------------------------------------------------------------------------- disk faults

needs_root = pytest.mark.skipif(not disk_faults_available(),
                                reason="disk faults need root, mount and chattr")
FAST_RETRY = OutboxConfig(retry_disk_s=0.01, memory_max_messages=1000)


def wait_durable(box: Outbox, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not box.retry() and not box.durable:
        assert time.monotonic() < deadline, box.health
        time.sleep(0.01)


@pytest.fixture
def small_fs(tmp_path: Path):
    fs = SmallFilesystem(tmp_path / "small", 1024)
    yield fs
    fs.close()


@needs_root
def test_a_full_disk_keeps_results_in_memory_and_recovers(small_fs: SmallFilesystem) -> None:
    path = small_fs.path / "outbox.sqlite"
    changes: list[str | None] = []
    with Outbox(path, FAST_RETRY) as box:
        box.on_health(changes.append)
        ids = [box.put("t", b"%d" % i + b"x" * 200) for i in range(20)]
        small_fs.fill()
        i = 20
        while box.durable:  # the WAL has some room left; it runs out
            ids.append(box.put("t", b"%d" % i + b"x" * 200))
            i += 1
            assert i < 5000, "the full disk was never noticed"
        ids += [box.put("t", b"%d" % n + b"x" * 200) for n in range(i, i + 50)]
        assert str(path) in (box.health or "") and changes == [box.health]
        assert [it.id for it in box.peek(10_000)] == ids and box.dropped == 0
        box.ack_many(ids[:10])
        small_fs.free()
        wait_durable(box)
        assert changes[-1] is None and len(changes) == 2 and box.health is None
    with Outbox(path) as reopened:  # what memory held is on disk now
        assert [it.id for it in reopened.peek(10_000)] == ids[10:]


@needs_root
def test_read_only_files_while_running_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, FAST_RETRY) as box:
        ids = [box.put("t", bytes([i])) for i in range(5)]
        set_immutable([path, Path(f"{path}-wal")], True)
        try:
            ids += [box.put("t", bytes([i])) for i in range(5, 10)]
            assert not box.durable and "refuses writes" in (box.health or "")
            box.ack(ids[0])
            assert box.set_aside(ids[1], "refused by the broker")
            assert not box.retry()  # still read-only
        finally:
            set_immutable([path, Path(f"{path}-wal")], False)
        wait_durable(box)
        assert [it.id for it in box.peek(100)] == ids[2:] and box.set_aside_count == 1
        assert box.put("t", b"after") > ids[-1]


def test_a_corrupt_file_is_moved_aside_and_a_fresh_one_started(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with Outbox(path) as box:
        assert box.durable and box.health is None and box.depth == 0
        box.put("t", b"fresh")
    kept = list(tmp_path.glob("outbox.sqlite.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not a database")


@needs_root
def test_an_unwritable_outbox_at_start_runs_in_memory_until_the_disk_allows(
        tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    set_immutable([folder], True)
    try:
        box = Outbox(folder / "outbox.sqlite", FAST_RETRY)
        assert not box.durable and "outbox.sqlite" in (box.health or "")
        ids = [box.put("t", bytes([i])) for i in range(3)]
        assert not box.retry()
    finally:
        set_immutable([folder], False)
    wait_durable(box)
    assert [it.id for it in box.peek(10)] == ids
    box.close()


def test_the_memory_queue_is_bounded_and_counts_what_it_drops(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "not-a-folder"
    folder.write_text("a file where the outbox folder should be")
    box = Outbox(folder / "outbox.sqlite", OutboxConfig(memory_max_messages=5))
    ids = [box.put("t", bytes([i])) for i in range(8)]
    assert [it.id for it in box.peek(10)] == ids[3:]
    assert box.memory_dropped == 3 and box.dropped == 3 and not box.durable
    assert caplog.text.count("memory queue is full") == 1  # once, not per message
    box.close()


@needs_root
def test_tiny_free_space_loses_nothing_uncounted(tmp_path: Path) -> None:
    """160 KB free: the file fills at once and results go on in memory (a sender keeps taking
    them); nothing is lost without being counted, and the state does not flap."""
    fs = SmallFilesystem(tmp_path / "tiny", 160)
    try:
        box = Outbox(fs.path / "outbox.sqlite", FAST_RETRY)
        changes: list[str | None] = []
        box.on_health(changes.append)
        put, acked = [], []
        for i in range(3000):
            put.append(box.put("t", b"%d" % i + b"y" * 200))
            box.retry()
            if i % 10 == 9:  # a sender that keeps up, with a small backlog
                batch = [it.id for it in box.peek(8)]
                box.ack_many(batch)
                acked += batch
        assert changes and changes[0] is not None and str(fs.path) in changes[0]
        assert len(changes) <= 3, changes
        left = [it.id for it in box.peek(10_000)]
        assert left == sorted(left) and not set(left) & set(acked)
        assert len(put) == len(acked) + len(left) + box.dropped
        box.close()
    finally:
        fs.close()
