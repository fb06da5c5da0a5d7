"""Helpers for the insights tests: a collector as a real child process, an acked publisher,
and questions to the lake through the same views the CLI uses."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from insights.engines import DuckDBEngine
from insights.lake import Lake

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def lake_rows(lake: Path, sql: str) -> list[tuple]:
    engine = DuckDBEngine(Lake(lake))
    try:
        return engine.rows(sql)[1]
    finally:
        engine.close()


def lake_value(lake: Path, sql: str) -> Any:
    return lake_rows(lake, sql)[0][0]


class CollectorProcess:
    """``edge-insights collect`` in a child process the test can SIGKILL."""

    def __init__(self, lake: Path, port: int, client_id: str, *extra: str,
                 log_dir: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.log_path = (log_dir or lake.parent) / f"collector-{client_id}-{time.time_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "insights.cli", "collect", "--broker",
             f"mqtt://127.0.0.1:{port}", "--lake", str(lake), "--client-id", client_id,
             "--flush-rows", "200", "--flush-seconds", "0.2", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class AckedPublisher:
    """A QoS 1 publisher that can wait until the broker has acknowledged everything."""

    def __init__(self, port: int) -> None:
        self._cond = threading.Condition()
        self._sent = 0
        self._acked = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self._cond:
            self._acked += 1
            self._cond.notify_all()

    def publish(self, items: Iterable[tuple[str, bytes]], retain: bool = False) -> int:
        n = 0
        for topic, payload in items:
            with self._cond:
                self._sent += 1
            self.client.publish(topic, payload, qos=1, retain=retain)
            n += 1
        return n

    def wait_acked(self, timeout: float = 30.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._acked >= self._sent, timeout):
                raise AssertionError(f"{self._sent - self._acked} publishes not acknowledged")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
