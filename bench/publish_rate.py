"""QoS 1 labels/s through the MQTT port to a local Mosquitto, outbox on disk vs in memory.

    .venv/bin/python -m bench.publish_rate [--count 10000] [--runs 3] [--protocol 5]

Starts its own Mosquitto on a free loopback port, a subscriber that confirms receipt of
every message, and times ``publish_durable`` of ~200-byte JSON labels from the first put
to the last message received. Also prints the cost of ``Outbox.put`` and ``ack``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.contract import Topics
from agent.mqtt.outbox import Outbox
from agent.mqtt.port import MqttPort
from bench.support.broker import Mosquitto

TOPICS = Topics("bench", "dev1")


def label(seq: int) -> bytes:
    body = {"seq": seq, "run_id": "3f2a9c", "ts": time.time(), "frame_ts": time.time(),
            "source": "cam0", "model": {"name": "seed-cnn", "version": "1.0.0"},
            "labels": [{"label": "cat", "index": 3, "score": 0.91}],
            "inference_ms": 0.42, "capture_to_publish_ms": 3.1}
    return json.dumps(body).encode()


class Counter:
    def __init__(self, port: int, topic: str, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.done = threading.Event()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        if not ready.wait(5):
            raise RuntimeError("bench subscriber did not subscribe")

    def _on_message(self, *_args: object) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_once(broker: Mosquitto, outbox: Outbox, count: int, protocol: str) -> float:
    payloads = [label(i) for i in range(count)]
    counter = Counter(broker.port, TOPICS.labels, count)
    port = MqttPort(MqttConfig(port=broker.port, protocol=protocol),  # type: ignore[arg-type]
                    TOPICS, outbox=outbox, status_payload=lambda s, r: {"state": s})
    port.start()
    if not port.wait_connected(5):
        raise RuntimeError(f"port did not connect: {port.stats()}")
    started = time.perf_counter()
    for payload in payloads:
        port.publish_durable(TOPICS.labels, payload)
    if not counter.done.wait(120):
        raise RuntimeError(f"only {counter.count} of {count} arrived")
    elapsed = time.perf_counter() - started
    port.stop(flush_timeout=1.0)
    counter.close()
    return count / elapsed


def outbox_costs(folder: Path, count: int = 20_000) -> dict[str, tuple[float, float]]:
    """Microseconds per message: put, and ack in batches of 100 (as the sender does)."""
    costs = {}
    for name, make in (("sqlite", lambda: Outbox(folder / "cost.db")),
                       ("memory", Outbox.disabled)):
        box: Outbox = make()  # type: ignore[operator]
        payload = label(0)
        t0 = time.perf_counter()
        ids = [box.put(TOPICS.labels, payload) for _ in range(count)]
        t1 = time.perf_counter()
        for start in range(0, count, 100):
            box.ack_many(ids[start:start + 100])
        t2 = time.perf_counter()
        box.close()
        costs[name] = (1e6 * (t1 - t0) / count, 1e6 * (t2 - t1) / count)
    return costs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder / "broker", persistence=False).start()
        modes: dict[str, Callable[[int], Outbox]] = {
            "outbox on (SQLite file)": lambda i: Outbox(folder / f"outbox-{i}.db"),
            "outbox off (in memory)": lambda i: Outbox.disabled(),
        }
        rates: dict[str, list[float]] = {name: [] for name in modes}
        try:
            for run in range(args.runs):  # interleaved, so drift hits both modes alike
                for name, make in modes.items():
                    box = make(run)
                    rates[name].append(run_once(broker, box, args.count, args.protocol))
                    box.close()
        finally:
            broker.stop()
        costs = outbox_costs(folder)
    print(f"\nQoS 1, MQTT {args.protocol}, {args.count} labels of {len(label(0))} bytes, "
          f"median of {args.runs}, subscriber confirms receipt\n")
    print(f"{'mode':<26}{'labels/s':>10}   runs")
    for name, values in rates.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{name:<26}{statistics.median(values):>10,.0f}   {runs}")
    print(f"\n{'outbox cost (us/msg)':<26}{'put':>10}{'ack/100':>10}")
    for name, (put, ack) in costs.items():
        print(f"{name:<26}{put:>10.1f}{ack:>10.1f}")


if __name__ == "__main__":
    main()
