"""A small MQTT session for the deploy tools: connect from a URL, publish with acks, collect."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.errors import DeployError
from deploy.connection import BrokerOptions, BrokerURL

__all__ = ["BrokerOptions", "BrokerURL", "MessageHandler", "MqttSession"]

MessageHandler = Callable[[str, bytes, bool], None]


class MqttSession:
    """A connected paho client (VERSION2 callbacks) with acked publishes and a message hook."""

    def __init__(self, url: str | BrokerOptions, *, cafile: str | None = None,
                 client_prefix: str = "edge-deploy", connect_timeout: float = 10.0) -> None:
        options = url if isinstance(url, BrokerOptions) else BrokerOptions.from_url(
            url, cafile=cafile)
        self.url = options.url
        self._cond = threading.Condition()
        self._acked: set[int] = set()
        self._subacked: set[int] = set()
        self._connected = threading.Event()
        self._refusal: str | None = None
        self._handlers: list[MessageHandler] = []
        self.client_id = f"{client_prefix}-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        options.configure(self.client)
        self._connect(connect_timeout)

    def _connect(self, timeout: float) -> None:
        try:
            self.client.connect(self.url.host, self.url.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise DeployError(f"cannot connect to {self.url.host}:{self.url.port}: {exc}") from exc
        self.client.loop_start()
        if not self._connected.wait(timeout) or self._refusal:
            self.close()
            raise DeployError(f"broker {self.url.host}:{self.url.port} refused the connection: "
                              f"{self._refusal or 'no CONNACK within ' + str(timeout) + ' s'}")

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
        self._connected.set()

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes=None, properties=None) -> None:
        with self._cond:
            self._subacked.add(mid)
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        for handler in list(self._handlers):
            handler(msg.topic, bytes(msg.payload), bool(msg.retain))

    def add_handler(self, handler: MessageHandler) -> None:
        self._handlers.append(handler)

    def subscribe(self, topic: str, timeout: float = 5.0) -> None:
        rc, mid = self.client.subscribe(topic, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise DeployError(f"subscribe to {topic} failed: {mqtt.error_string(rc)}")
        self._wait(lambda: mid in self._subacked, timeout, f"SUBACK for {topic}")

    def subscribe_many(self, topics: list[str], timeout: float = 10.0) -> None:
        """One SUBSCRIBE for many topics (QoS 1)."""
        if not topics:
            return
        rc, mid = self.client.subscribe([(t, 1) for t in topics])
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise DeployError(f"subscribe to {len(topics)} topics failed: "
                              f"{mqtt.error_string(rc)}")
        self._wait(lambda: mid in self._subacked, timeout, f"SUBACK for {len(topics)} topics")

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the message id (see ``wait_acked``)."""
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_QUEUE_SIZE):
            raise DeployError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info.mid

    def unacked(self, mids: set[int]) -> set[int]:
        with self._cond:
            return mids - self._acked

    def wait_acked(self, mids: set[int], timeout: float, max_unacked: int = 0) -> None:
        self._wait(lambda: len(mids - self._acked) <= max_unacked, timeout,
                   f"PUBACK of {len(mids)} message(s)")

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(done, timeout):
                raise DeployError(f"timed out after {timeout:g} s waiting for {what}")

    def close(self) -> None:
        self.client.disconnect()  # before loop_stop: the loop then exits at once
        self.client.loop_stop()
