"""Where capture-to-arrival goes: a 30 fps paced agent, a subscriber on the same host, and
variants that each remove one suspect (``python -m bench.arrival [--seconds 8]``).

Each label carries ``frame_ts`` (capture, wall clock) and ``capture_to_publish_ms`` (capture
to the outbox put); the subscriber stamps arrival. The difference of the p99s is what the
outbox, the sender thread, paho, the broker and the subscriber add. Variants:

* ``now``: the agent as it is (a label put in the outbox while nothing is in flight is sent
  from the publishing thread at once; the sender thread handles the rest).
* ``before``: the sender thread sends every label (woken by the put).
* ``agent socket TCP_NODELAY``: the agent's MQTT socket with Nagle's algorithm off (paho
  leaves it on).
* ``outbox off``: in-memory outbox (no SQLite commit).
* ``GIL switch interval 0.5 ms``: CPython hands the GIL over every 0.5 ms instead of 5 ms
  (does paho's network thread wait for the GIL?).
* ``broker nodelay``: Mosquitto with ``set_tcp_nodelay true`` (its socket to the subscriber).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.agentrun import AgentProcess, AgentSetup, Subscriber
from bench.common import DATA, REPO, LoadMeter, make_video, median, pct

NODELAY_PRELUDE = (
    "import socket as _s\n"
    "import paho.mqtt.client as _pc\n"
    "_orig = _pc.socket.create_connection\n"
    "def _cc(*a, **k):\n"
    "    sock = _orig(*a, **k)\n"
    "    sock.setsockopt(_s.IPPROTO_TCP, _s.TCP_NODELAY, 1)\n"
    "    return sock\n"
    "_pc.socket.create_connection = _cc\n")


@contextlib.contextmanager
def broker_with(extra: list[str]) -> Iterator[Any]:
    sys.path.insert(0, str(REPO))
    from bench.support.broker import Mosquitto

    with tempfile.TemporaryDirectory(prefix="bench-mq-") as tmp:
        mq = Mosquitto(Path(tmp), persistence=False, extra_conf=extra).start()
        try:
            yield mq
        finally:
            mq.stop()


def paced(port: int, setup: AgentSetup, workdir: Path, seconds: float,
          prelude: str | None = None, skip_s: float = 2.0) -> dict[str, float]:
    sub = Subscriber(port, keep_labels=True)
    agent = AgentProcess(setup.config(workdir, port), prelude=prelude)
    try:
        if not sub.wait_labels(1, 60):
            raise RuntimeError(f"no label from the agent:\n{agent.log_tail()}")
        meter = LoadMeter([agent.pid]).start()
        time.sleep(seconds + skip_s)
        load = meter.stop()
    finally:
        agent.stop()
        sub.close()
    assert sub.first_label_at is not None
    kept = [(t, b) for t, b in sub.label_bodies if t >= sub.first_label_at + skip_s]
    publish = [b["capture_to_publish_ms"] for _, b in kept]
    arrival = [(t - b["frame_ts"]) * 1000.0 for t, b in kept]
    return {"labels": float(len(kept)), "publish_p50": pct(publish, 50),
            "publish_p99": pct(publish, 99), "arrival_p50": pct(arrival, 50),
            "arrival_p99": pct(arrival, 99),
            "arrival_minus_publish_p99": pct(arrival, 99) - pct(publish, 99),
            "other_load": load.get("foreign_cores", float("nan"))}


TRACE_PRELUDE = (
    "import atexit, json, os, time\n"
    "import agent.mqtt.port as _p, agent.mqtt.sender as _s\n"
    "_T = {}\n"
    "def _seq(b):\n"
    "    return int(b[7:b.index(b',')]) if b.startswith(b'{\"seq\":') else None\n"
    "_pd = _p.MqttPort.publish_durable\n"
    "def publish_durable(self, topic, payload, qos=None):\n"
    "    t0 = time.time(); r = _pd(self, topic, payload, qos)\n"
    "    _T.setdefault(_seq(payload), {}).update(put0=t0, put1=time.time()); return r\n"
    "_p.MqttPort.publish_durable = publish_durable\n"
    "_sd = _s.OutboxSender._send\n"
    "def _send(self, session, item):\n"
    "    t0 = time.time(); r = _sd(self, session, item)\n"
    "    _T.setdefault(_seq(item.payload), {}).update(send0=t0, send1=time.time()); return r\n"
    "_s.OutboxSender._send = _send\n"
    "atexit.register(lambda: open(os.environ['ARRIVAL_TRACE'], 'w').write(json.dumps(\n"
    "    {str(k): v for k, v in _T.items() if k is not None})))\n")


SENDER_ONLY_PRELUDE = (
    "import agent.mqtt.port as _p\n"
    "def publish_durable(self, topic, payload, qos=None):\n"
    "    item_id = self.outbox.put(topic, payload, self.cfg.qos if qos is None else qos)\n"
    "    self._wake.set()\n"
    "    return item_id\n"
    "_p.MqttPort.publish_durable = publish_durable\n")

VARIANTS: dict[str, dict[str, Any]] = {
    "now: send from the caller when idle": {},
    "before: sender thread only": {"prelude": SENDER_ONLY_PRELUDE},
    "agent socket TCP_NODELAY": {"prelude": NODELAY_PRELUDE},
    "outbox off": {"outbox": False},
    "GIL switch interval 0.5 ms": {"prelude": "import sys\nsys.setswitchinterval(0.0005)\n"},
    "broker set_tcp_nodelay": {"broker": ["set_tcp_nodelay true"]},
}


def compare(manifest: Path, video: Path, work: Path, seconds: float, rounds: int,
            names: list[str] | None = None) -> dict[str, Any]:
    """Interleaved rounds of each variant; medians per variant."""
    names = names or list(VARIANTS)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names:
            v = VARIANTS[name]
            setup = AgentSetup(manifest, video, realtime=True, num_threads=2,
                               outbox=v.get("outbox", True))
            with broker_with(v.get("broker", [])) as mq:
                runs[name].append(paced(mq.port, setup, work / f"{r}-{len(runs[name])}"
                                        f"-{names.index(name)}", seconds, v.get("prelude")))
    med = {n: {k: median([x[k] for x in rs]) for k in rs[0]} for n, rs in runs.items()}
    return {"median": med, "runs": runs}


def trace(port: int, setup: AgentSetup, workdir: Path, seconds: float,
          skip_s: float = 2.0) -> dict[str, dict[str, float]]:
    """One traced run: per label, where the time from capture to arrival went (p50 / p99 of
    each step, ms)."""
    import json

    workdir.mkdir(parents=True, exist_ok=True)
    trace_file = workdir / "trace.json"
    sub = Subscriber(port, keep_labels=True)
    agent = AgentProcess(setup.config(workdir, port), prelude=TRACE_PRELUDE,
                         extra_env={"ARRIVAL_TRACE": str(trace_file)})
    try:
        if not sub.wait_labels(1, 60):
            raise RuntimeError(f"no label from the agent:\n{agent.log_tail()}")
        time.sleep(seconds + skip_s)
    finally:
        agent.stop()
        sub.close()
    marks = json.loads(trace_file.read_text())
    assert sub.first_label_at is not None
    steps: dict[str, list[float]] = {k: [] for k in (
        "capture to publish_durable (preprocess, invoke, payload)",
        "outbox commit, then to the paho call (direct, or the sender's wake-up)",
        "paho publish call", "paho's loop thread, socket, broker, subscriber",
        "capture to arrival")}
    for arrived, body in sub.label_bodies:
        m = marks.get(str(body["seq"]))
        if arrived < sub.first_label_at + skip_s or not m or "send0" not in m:
            continue
        points = [body["frame_ts"], m["put0"], m["send0"], m["send1"], arrived]
        for name, a, b in zip(steps, points, points[1:], strict=False):
            steps[name].append((b - a) * 1000.0)
        steps["capture to arrival"].append((arrived - body["frame_ts"]) * 1000.0)
    return {k: {"p50": pct(v, 50), "p99": pct(v, 99), "max": max(v) if v else float("nan")}
            for k, v in steps.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.arrival", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", type=Path, default=DATA / "digits_cnn.json")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / "results" / "cache")
    parser.add_argument("--trace", action="store_true", help="one traced run, step by step")
    args = parser.parse_args(argv)
    video = make_video(args.cache / "scene_640x480.avi")
    if args.trace:
        with tempfile.TemporaryDirectory(prefix="bench-arrival-") as tmp, broker_with([]) as mq:
            steps = trace(mq.port, AgentSetup(args.model, video, realtime=True), Path(tmp),
                          args.seconds)
        print("| step | p50 ms | p99 ms | max ms |\n|---|---|---|---|")
        for name, v in steps.items():
            print(f"| {name} | {v['p50']:.3f} | {v['p99']:.3f} | {v['max']:.3f} |")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-arrival-") as tmp:
        res = compare(args.model, video, Path(tmp), args.seconds, args.rounds)
    print(f"capture to arrival at a subscriber, 30 fps, QoS 1, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| variant | publish p50 / p99 ms | arrival p50 / p99 ms | arrival p99 - publish p99 "
          "ms | other load, cores |")
    print("|---|---|---|---|---|")
    for name, m in res["median"].items():
        print(f"| {name} | {m['publish_p50']:.2f} / {m['publish_p99']:.2f} | "
              f"{m['arrival_p50']:.2f} / {m['arrival_p99']:.2f} | "
              f"{m['arrival_minus_publish_p99']:.2f} | {m['other_load']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
