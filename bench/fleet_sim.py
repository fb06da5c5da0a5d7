"""Simulated devices for fleet benchmarks: many in one asyncio process (aiomqtt).

A load generator, never a substitute for the real agent in tests. Each device speaks the
device side of the contract with the agent's own modules: topics from ``agent.contract``,
status from ``agent.payloads``, labels through ``agent.payloads.labels_payload``, and the
model-delivery receive path through ``agent.models.wire`` (chunk decoding, push ids, and
``parse_offer`` / ``verify_offer``: the signature, target and expiry) with the sha256 check of
the whole file. It keeps a retained status with a last will, publishes labels at a set rate
and a retained stats message, and reconnects with the agent's backoff (doubling, with jitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from agent.contract import STATE_OFFLINE, STATE_ONLINE, Topics
from agent.errors import EdgeError
from agent.manifest import parse_manifest
from agent.models.wire import (
    RESULT_NOOP,
    RESULT_OK,
    RESULT_REFUSED,
    decode_chunk,
    json_object,
    parse_offer,
    push_id_of,
    verify_offer,
)
from agent.payloads import encode, labels_payload, status_body
from agent.records import LabelScore, Result


@dataclass
class SimOptions:
    host: str
    port: int
    prefix: str = "edge"
    groups: tuple[str, ...] = ("sim",)
    labels_per_s: float = 1.0
    stats_interval_s: float = 10.0
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5  # the agent's defaults (agent/config.py)
    reconnect_max_s: float = 30.0
    trusted: list[Any] = field(default_factory=list)  # Ed25519PublicKey objects


@dataclass
class SimStats:
    connects: list[float] = field(default_factory=list)  # wall time of every CONNACK
    labels_sent: int = 0
    pushes: dict[str, int] = field(default_factory=dict)  # result -> count


@dataclass
class _Push:
    push_id: str
    manifest: dict[str, Any]
    chunks: int
    parts: dict[int, bytes] = field(default_factory=dict)


class SimDevice:
    def __init__(self, device_id: str, opts: SimOptions, stats: SimStats) -> None:
        self.topics = Topics(opts.prefix, device_id, opts.groups)
        self.opts = opts
        self.stats = stats
        self.model = {"name": "digits_cnn", "version": "1.0.0", "sha256": "0" * 64,
                      "task": "frame"}
        self.started = time.time()
        self.seq = 0
        self.online = asyncio.Event()
        self._pushes: dict[str, _Push] = {}
        self._finished: list[str] = []  # later parts of a finished push are ignored

    def _status(self, state: str) -> bytes:
        return encode(status_body(state, device=self.topics.device_id,
                                  groups=list(self.topics.groups), model=self.model,
                                  since=self.started, runtime=None, reason=None))

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await self._session(stop)
                failures = 0
            except aiomqtt.MqttError:
                self.online.clear()
                delay = min(self.opts.reconnect_max_s,
                            self.opts.reconnect_min_s * 2 ** min(failures, 20))
                failures += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), random.uniform(delay / 2, delay))

    async def _session(self, stop: asyncio.Event) -> None:
        will = aiomqtt.Will(self.topics.status, self._status(STATE_OFFLINE), qos=1, retain=True)
        async with aiomqtt.Client(self.opts.host, self.opts.port,
                                  identifier=f"sim-{self.topics.device_id}", will=will,
                                  keepalive=self.opts.keepalive_s,
                                  protocol=aiomqtt.ProtocolVersion.V311,
                                  max_queued_outgoing_messages=1000) as client:
            self.stats.connects.append(time.time())
            await client.publish(self.topics.status, self._status(STATE_ONLINE), qos=1,
                                 retain=True)
            for f in self.topics.model_filters():
                await client.subscribe(f, qos=1)
            self.online.set()
            tasks = [asyncio.create_task(self._labels(client)),
                     asyncio.create_task(self._stats(client)),
                     asyncio.create_task(self._receive(client))]
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for t in [*tasks, stopper]:
                t.cancel()
            errors = [e for e in await asyncio.gather(*tasks, return_exceptions=True)
                      if isinstance(e, aiomqtt.MqttError)]
            if errors and not stop.is_set():
                raise errors[0]
            del done
            if stop.is_set():
                await client.publish(self.topics.status, self._status("stopped"), qos=1,
                                     retain=True)

    async def _labels(self, client: aiomqtt.Client) -> None:
        if self.opts.labels_per_s <= 0:
            await asyncio.Event().wait()
        period = 1.0 / self.opts.labels_per_s
        await asyncio.sleep(random.uniform(0, period))
        while True:
            self.seq += 1
            now, mono = time.time(), time.monotonic()
            result = Result(self.seq, "cam", self.seq, now, mono,
                            (LabelScore("7", 7, 0.93), LabelScore("1", 1, 0.04)), 0.2, 0.1,
                            self.model["name"], self.model["version"])
            await client.publish(self.topics.labels, labels_payload(result, "sim"), qos=1)
            self.stats.labels_sent += 1
            await asyncio.sleep(period)

    async def _stats(self, client: aiomqtt.Client) -> None:
        while True:
            body = {"fps_in": self.opts.labels_per_s, "fps_out": self.opts.labels_per_s,
                    "inference_ms_p95": 0.3, "ts": time.time(),
                    "uptime_s": time.time() - self.started}
            await client.publish(self.topics.stats, json.dumps(body), qos=1, retain=True)
            await asyncio.sleep(self.opts.stats_interval_s)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            part = Topics.last_segment(str(message.topic))
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                answer = self.on_part(part, payload)
            except EdgeError as exc:  # wire.Refused and signing errors
                answer = (_push_id_or_none(payload), RESULT_REFUSED, str(exc))
            if answer is not None:
                if answer[0] in self._finished:
                    continue
                if answer[0] is not None:
                    self._finished = [*self._finished[-63:], answer[0]]
                await self._answer(client, *answer)

    def on_part(self, part: str, payload: bytes) -> tuple[str | None, str, str | None] | None:
        """One model-delivery message; a (push id, result, reason) when the push is done."""
        if part == "manifest":
            offer = parse_offer(json_object(payload, "manifest"))
            verify_offer(offer, self.opts.trusted, device_id=self.topics.device_id,
                         groups=self.topics.groups, now=time.time())
            parse_manifest(offer.manifest, origin=f"push {offer.push_id}")
            self._pushes = {offer.push_id: _Push(offer.push_id, offer.manifest, offer.chunks)}
            return None
        if part == "chunk":
            push_id, index, data = decode_chunk(payload)
            push = self._pushes.get(push_id)
            if push is not None and 0 <= index < push.chunks:
                push.parts[index] = data
            return None
        if part == "commit":
            push_id = push_id_of(json_object(payload, "commit"))
            push = self._pushes.pop(push_id, None)
            if push is None:
                if push_id in self._finished:
                    return None
                return push_id, RESULT_REFUSED, "commit for an unknown push"
            return self._commit(push)
        return None

    def _commit(self, push: _Push) -> tuple[str, str, str | None]:
        if len(push.parts) != push.chunks:
            return push.push_id, RESULT_REFUSED, f"{push.chunks - len(push.parts)} chunk(s) missing"
        digest = hashlib.sha256(b"".join(push.parts[i] for i in range(push.chunks))).hexdigest()
        m = push.manifest
        if digest != m.get("sha256"):
            return push.push_id, RESULT_REFUSED, "sha256 of the model does not match the manifest"
        if digest == self.model["sha256"] and m.get("version") == self.model["version"]:
            return push.push_id, RESULT_NOOP, None
        self.model = {"name": m["name"], "version": m["version"], "sha256": digest,
                      "task": m.get("task", "frame")}
        self._manifest = m
        return push.push_id, RESULT_OK, None

    async def _answer(self, client: aiomqtt.Client, push_id: str | None, result: str,
                      reason: str | None) -> None:
        m = getattr(self, "_manifest", {}) if result != RESULT_REFUSED else {}
        body = {"push_id": push_id, "device": self.topics.device_id, "name": m.get("name"),
                "version": m.get("version"), "sha256": m.get("sha256"), "result": result,
                "reason": reason, "via": "device", "ts": time.time()}
        self.stats.pushes[result] = self.stats.pushes.get(result, 0) + 1
        await client.publish(self.topics.model("result"), json.dumps(body), qos=1)
        if result == RESULT_OK:
            await client.publish(self.topics.status, self._status(STATE_ONLINE), qos=1,
                                 retain=True)


def _push_id_or_none(payload: bytes) -> str | None:
    try:
        return push_id_of(json_object(payload, "message"))
    except EdgeError:
        return None


class SimFleet:
    """``count`` devices named ``sim-0000``... in one event loop, on a thread of its own."""

    def __init__(self, count: int, opts: SimOptions, name: Callable[[int], str] | None = None
                 ) -> None:
        self.stats = SimStats()
        self.opts = opts
        self._name = name or (lambda i: f"sim-{i:04d}")
        self.devices = [SimDevice(self._name(i), opts, self.stats) for i in range(count)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks = []
        for d in self.devices:  # a gentle start, like devices powered on over a few seconds
            tasks.append(asyncio.create_task(d.run(self._stop)))
            await asyncio.sleep(0.005)
        await asyncio.gather(*(d.online.wait() for d in self.devices))
        if ready:
            ready()
        await asyncio.gather(*tasks)

    def grow(self, count: int) -> None:
        """Start ``count`` more devices on the running loop (called from another thread)."""
        assert self._loop is not None and self._stop is not None
        stop = self._stop
        new = [SimDevice(self._name(len(self.devices) + i), self.opts, self.stats)
               for i in range(count)]
        self.devices.extend(new)

        async def launch() -> None:
            for d in new:
                asyncio.get_running_loop().create_task(d.run(stop))
                await asyncio.sleep(0.005)

        asyncio.run_coroutine_threadsafe(launch(), self._loop).result()

    def online(self) -> int:
        return sum(d.online.is_set() for d in self.devices)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
