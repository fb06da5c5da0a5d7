"""A small paho subscriber for tests: collects messages and waits for them with a deadline."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    ts: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    def __init__(self, port: int, topics: list[str] | str, host: str = "127.0.0.1",
                 protocol: int = mqtt.MQTTv311, qos: int = 1, client_id: str = "",
                 clean_session: bool = True, **connect_kw: Any) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        session = {"clean_session": clean_session} if protocol != mqtt.MQTTv5 else {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, **session)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a, **k: self._subscribed.set()
        self._qos = qos
        self.client.connect(host, port, **connect_kw)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise TimeoutError("test subscriber did not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            return
        for t in self.topics:
            client.subscribe(t, qos=self._qos)

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain),
                                          time.time()))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0,
                 what: str = "messages") -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [(m.topic, m.payload[:120]) for m in self.messages[-5:]]
                    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; "
                                       f"got {len(self.messages)}, last: {tail}")
                self._cond.wait(left)
            return list(self.messages)

    def on_topic(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_topic(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[Received]:
        self.wait_for(lambda ms: sum(m.topic == topic for m in ms) >= count, timeout,
                      what=f"{count} on {topic}")
        return self.on_topic(topic)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, **kw: Any) -> None:
        info = self.client.publish(topic, payload, qos=qos, **kw)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
