"""Fault survival of the whole agent process: broker restarts, an agent SIGKILL with results
pending, a camera stream that goes away, and hostile input on every inbound topic."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.demo import write_digits_video
from bench.support.agent_proc import DATA, AgentProcess, agent_config
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector
from tests.support.mjpeg_server import MjpegServer
from tests.support.videos import numbered_frames

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")
LABELS = "edge/dev1/labels"


def seqs_by_run(sub: Collector) -> dict[str, list[int]]:
    runs: dict[str, list[int]] = {}
    for m in sub.on_topic(LABELS):
        body = m.json()
        runs.setdefault(body["run_id"], []).append(body["seq"])
    return runs


def assert_complete_in_order(seqs: list[int]) -> None:
    """Every seq from 1 to the highest seen arrived; order kept (duplicates allowed)."""
    unique = list(dict.fromkeys(seqs))
    assert unique == sorted(unique), "out of order"
    assert unique == list(range(1, unique[-1] + 1)), \
        f"missing {sorted(set(range(1, unique[-1] + 1)) - set(unique))[:20]}"


def looping_agent(tmp_path: Path, port: int, **sections: object) -> AgentProcess:
    video = tmp_path / "digits.avi"
    write_digits_video(video, fps=30)
    cfg = agent_config(tmp_path, port, [{"name": "cam", "type": "camera", "uri": str(video),
                                         "loop": True, "realtime": True}], **sections)
    return AgentProcess(cfg)


def wait_saved(broker: Mosquitto, since: float, timeout: float = 5.0) -> None:
    saved = broker.workdir / "mosquitto.db"
    deadline = time.monotonic() + timeout
    while not (saved.exists() and saved.stat().st_mtime > since):
        assert time.monotonic() < deadline, "the broker did not save the subscriber's session"
        time.sleep(0.02)


def outbox_depth(tmp_path: Path) -> int:
    """Results waiting in the agent's outbox, read from its file (read-only)."""
    path = tmp_path / "state-dev1" / "outbox.sqlite"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=1)) as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    except sqlite3.Error:
        return 0


def wait_outbox(tmp_path: Path, depth: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while outbox_depth(tmp_path) < depth:
        assert time.monotonic() < deadline, f"fewer than {depth} results in the outbox"
        time.sleep(0.05)


def persistent_subscriber(port: int) -> Collector:
    return Collector(port, [LABELS, "edge/dev1/status"], client_id="test-sub",
                     clean_session=False)


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_broker_outage_loses_nothing(tmp_path: Path, kill: bool) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    sub = persistent_subscriber(broker.port)
    subscribed_at = time.time()
    agent = looping_agent(tmp_path, broker.port)
    try:
        sub.wait_topic(LABELS, count=20, timeout=30)
        if kill:  # SIGKILL keeps only what the last autosave wrote: the subscriber's session
            wait_saved(broker, subscribed_at)
        broker.stop(kill=kill)
        wait_outbox(tmp_path, 60)  # the outage lasts until 60 results wait in the outbox
        broker.start()
        before = len(sub.on_topic(LABELS))
        sub.wait_topic(LABELS, count=before + 90, timeout=30)
    finally:
        agent.terminate_timed()
        sub.close()
        broker.stop()
    runs = seqs_by_run(sub)
    assert len(runs) == 1
    seqs = next(iter(runs.values()))
    assert_complete_in_order(seqs)
    assert seqs[-1] >= 100  # 20 before, ~60 during the outage, 90 after


def test_results_pending_at_sigkill_are_delivered_after_restart(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    sub = persistent_subscriber(broker.port)
    agent = looping_agent(tmp_path, broker.port)
    try:
        sub.wait_topic(LABELS, count=10, timeout=30)
        broker.stop()
        wait_outbox(tmp_path, 40)  # results pile up in the outbox
        agent.signal(signal.SIGKILL)
        agent.wait()
        broker.start()
        agent = looping_agent(tmp_path, broker.port)
        sub.wait_for(lambda ms: len(seqs_by_run(sub)) == 2
                     and len(next(iter(seqs_by_run(sub).values()))) >= 40, timeout=30,
                     what="the first run's backlog")
    finally:
        agent.terminate_timed()
        sub.close()
        broker.stop()
    first_run = next(iter(seqs_by_run(sub).values()))
    assert_complete_in_order(first_run)
    assert first_run[-1] >= 50  # 10 delivered before the outage, 40 or more kept meanwhile


def test_mjpeg_stream_loss_degrades_and_recovers(tmp_path: Path,
                                                 mosquitto: Mosquitto) -> None:
    server = MjpegServer(numbered_frames(30, 112, 112), fps=20).start()
    cfg = agent_config(tmp_path, mosquitto.port, [
        {"name": "ipcam", "type": "camera", "uri": server.url, "open_timeout_ms": 500,
         "read_timeout_ms": 500, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}])
    sub = Collector(mosquitto.port, [LABELS, "edge/dev1/status"])
    agent = AgentProcess(cfg)

    def states() -> list[str]:
        return [m.json()["state"] for m in sub.on_topic("edge/dev1/status")]

    try:
        sub.wait_topic(LABELS, count=5, timeout=30)
        server.corrupt_next(3)
        n = len(sub.on_topic(LABELS))
        sub.wait_topic(LABELS, count=n + 5, timeout=10)
        server.go_away()
        sub.wait_for(lambda ms: "degraded" in states(), timeout=15, what="degraded")
        server.come_back()
        n = len(sub.on_topic(LABELS))
        sub.wait_topic(LABELS, count=n + 5, timeout=20)
        sub.wait_for(lambda ms: states()[-1] == "online", timeout=10, what="online again")
        assert agent.proc.poll() is None
    finally:
        agent.terminate_timed()
        sub.close()
        server.stop()
    reason = next(m.json()["reason"] for m in sub.on_topic("edge/dev1/status")
              if m.json()["state"] == "degraded")
    assert "ipcam" in reason


@pytest.fixture(scope="module")
def lstm_agent(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("hostile")
    broker = Mosquitto(tmp / "broker").start()
    cfg = agent_config(tmp, broker.port, [{"name": "imu", "type": "mqtt"}],
                       manifest="gestures_lstm.json")
    agent = AgentProcess(cfg)
    sub = Collector(broker.port, ["edge/dev1/#"])
    sub.wait_topic("edge/dev1/status", timeout=30)
    yield agent, sub
    agent.terminate_timed()
    sub.close()
    broker.stop()


COMMAND_NAMES = st.sampled_from(["ping", "pause", "config", "model", "snapshot", "nope",
                                 "x" * 70, "üñí"])
PAYLOADS = st.one_of(
    st.binary(max_size=2048),
    st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers()
                 | st.text(max_size=20),
                 lambda kids: st.lists(kids, max_size=5)
                 | st.dictionaries(st.text(max_size=8), kids, max_size=5),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    st.builds(lambda rid, action, values: json.dumps(
        {"id": rid, "action": action, "values": values}).encode(),
        st.integers(), st.sampled_from(["get", "set", "list", "rollback", "boom", None]),
        st.dictionaries(st.sampled_from(["top_k", "min_score", "bogus", "paused"]),
                        st.one_of(st.integers(-5, 200), st.floats(), st.text(max_size=3)))),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=COMMAND_NAMES, payload=PAYLOADS, stream=st.sampled_from(["wrist", "s 1", "ok"]))
def test_hostile_input_never_stops_the_labels(lstm_agent, name: str, payload: bytes,
                                              stream: str) -> None:
    agent, sub = lstm_agent
    sub.publish(f"edge/dev1/cmd/{name}", payload, qos=0)
    sub.publish(f"edge/dev1/in/{stream}", payload, qos=0)
    sub.publish(f"edge/dev1/in/{stream}", b"A" * 200_000, qos=0)
    assert agent.proc.poll() is None, agent.log()[-2000:]


def test_after_the_storm_labels_and_replies_still_flow(lstm_agent) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    agent, sub = lstm_agent
    sub.publish("edge/dev1/cmd/resume", b'{"id": "r1"}')
    sub.publish("edge/dev1/cmd/config", json.dumps(
        {"id": "c1", "action": "set", "values": {"min_score": 0.0, "top_k": 3}}).encode())
    window = np.load(DATA / "gestures_sample.npz")["x"][0].astype(np.float32)
    before = len(sub.on_topic(LABELS))
    for _ in range(2):
        sub.publish("edge/dev1/in/clean", json.dumps(window.tolist()).encode())
    sub.wait_topic(LABELS, count=before + 2, timeout=20)
    sub.publish("edge/dev1/cmd/ping", b'{"id": 42}')
    reply = sub.wait_for(lambda ms: any(m.topic == "edge/dev1/cmd/ping/result"
                                        and m.json().get("id") == 42 for m in ms),
                         timeout=10, what="ping reply")
    assert reply
    log = agent.log()
    assert "rejected" in log and "Traceback" not in log
