"""The whole agent when the disk under its outbox refuses: full or read-only while running,
corrupt or unwritable at start. Real agent process, real Mosquitto, a real small tmpfs and
real immutable files (root only). The promise: nothing lost, or counted and reported; status
says ``degraded`` with the reason; durability comes back by itself; no restart loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.support.agent_proc import DATA
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector
from tests.support.disk import SmallFilesystem, disk_faults_available, set_immutable
from tests.test_agent_faults import LABELS, assert_complete_in_order, looping_agent, seqs_by_run

pytestmark = [
    pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                       reason="reference models not built (make models)"),
    pytest.mark.skipif(not disk_faults_available(), reason="disk faults need root"),
]
STATUS = "edge/dev1/status"
STATS = "edge/dev1/stats"


def states(sub: Collector) -> list[tuple[str, str | None]]:
    return [(m.json()["state"], m.json().get("reason")) for m in sub.on_topic(STATUS)]


def wait_state(sub: Collector, state: str, after: int = 0, timeout: float = 20.0) -> str | None:
    """The reason of the first ``state`` status after the first ``after`` ones."""
    sub.wait_for(lambda _ms: any(s == state for s, _ in states(sub)[after:]), timeout=timeout,
                 what=f"status {state}")
    return next(r for s, r in states(sub)[after:] if s == state)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFilesystem]:
    fs = SmallFilesystem(tmp_path / "small", 8 * 1024)
    yield fs
    fs.close()


def run_fault(tmp_path: Path, outbox: Path, fault: Callable[[bool], None]) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Collector(broker.port, [LABELS, STATUS, STATS])
    agent = looping_agent(tmp_path, broker.port,
                          outbox={"path": str(outbox), "retry_disk_s": 0.2})
    try:
        sub.wait_topic(LABELS, count=20, timeout=30)
        seen = len(states(sub))
        fault(True)
        reason = wait_state(sub, "degraded", after=seen)
        assert reason is not None and str(outbox) in reason
        produced = len(sub.on_topic(LABELS))
        sub.wait_topic(LABELS, count=produced + 30, timeout=20)  # labels keep flowing
        sub.wait_for(lambda ms: any(m.topic == STATS and m.json()["outbox_durable"]
                                    is False for m in ms), timeout=10, what="stats")
        seen = len(states(sub))
        fault(False)
        assert wait_state(sub, "online", after=seen) is None
        produced = len(sub.on_topic(LABELS))
        sub.wait_topic(LABELS, count=produced + 30, timeout=20)
    finally:
        code, _ = agent.terminate_timed()
        sub.close()
        broker.stop()
    runs = seqs_by_run(sub)
    assert len(runs) == 1 and code == 0
    assert_complete_in_order(next(iter(runs.values())))  # nothing lost
    log = agent.log()
    assert log.count("refuses writes") == 1 and log.count("durable again") == 1, log[-3000:]
    assert "Traceback" not in log


def test_a_filesystem_full_while_running_loses_no_result(tmp_path: Path,
                                                         small_fs: SmallFilesystem) -> None:
    run_fault(tmp_path, small_fs.path / "outbox.sqlite",
              lambda on: small_fs.fill() if on else small_fs.free())


@pytest.mark.slow
def test_an_outbox_made_read_only_while_running_loses_no_result(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox" / "outbox.sqlite"
    files = [outbox, Path(f"{outbox}-wal")]
    run_fault(tmp_path, outbox, lambda on: set_immutable(files, on))


def test_a_corrupt_or_unwritable_outbox_at_start_is_no_restart_loop(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    corrupt = tmp_path / "corrupt" / "outbox.sqlite"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"garbage, not SQLite" * 500)
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "dev2").mkdir()
    set_immutable([locked], True)
    sub = Collector(broker.port, [LABELS, STATUS, "edge/dev2/labels", "edge/dev2/status"])
    first = looping_agent(tmp_path, broker.port, outbox={"path": str(corrupt)})
    second = looping_agent(tmp_path / "dev2", broker.port, device="dev2",
                           outbox={"path": str(locked / "outbox.sqlite"), "retry_disk_s": 0.2})
    try:
        sub.wait_topic(LABELS, count=10, timeout=30)
        sub.wait_topic("edge/dev2/labels", count=10, timeout=30)  # in memory, but flowing
        assert states(sub)[-1][0] == "online"
        reason = next(m.json()["reason"] for m in sub.on_topic("edge/dev2/status")
                      if m.json()["state"] == "degraded")
        assert str(locked / "outbox.sqlite") in reason
        set_immutable([locked], False)
        sub.wait_for(lambda ms: [m.json()["state"] for m in ms if m.topic == "edge/dev2/status"
                                 ][-1] == "online", timeout=20, what="dev2 durable again")
        assert first.proc.poll() is None and second.proc.poll() is None
    finally:
        set_immutable([locked], False)
        first.terminate_timed()
        second.terminate_timed()
        sub.close()
        broker.stop()
    log = first.log()
    assert f"outbox {corrupt} is corrupt" in log and "moved aside" in log
    kept = list(corrupt.parent.glob("outbox.sqlite.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"garbage")
    assert (locked / "outbox.sqlite").exists()
