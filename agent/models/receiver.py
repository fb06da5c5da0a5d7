"""Agent side of model delivery: receive a pushed model, verify it, load it, hand it over.

The wire format is in ``agent/models/wire.py``. ``handle()`` runs on the MQTT network thread
and only enqueues; one worker thread owns all push state, writes chunks, verifies, loads and
warms the model, so the network thread is never blocked for long. Every outcome is one result dict
passed to ``publish_result``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.contract import Topics
from agent.errors import DeployError, EdgeError
from agent.files import atomic_write_bytes, sha256_file
from agent.inference.engine import DelegateSpec, Engine
from agent.manifest import ModelManifest, parse_manifest
from agent.models.signing import KeySpec, load_trusted_keys, verify_manifest
from agent.models.store import MANIFEST_NAME, SIGNATURE_NAME, InstalledModel, ModelStore
from agent.models.wire import (
    PART_FILE,
    PARTS,
    RESULT_ERROR,
    RESULT_NOOP,
    RESULT_OK,
    RESULT_REFUSED,
    Refused,
    decode_chunk,
    json_object,
    push_id_of,
)

log = logging.getLogger(__name__)

MAX_PUSHES = 4
FINISHED_MEMORY = 256

# --------------------------------------------------------------------------- push state


@dataclass
class _Push:
    push_id: str
    via: str
    manifest: ModelManifest
    manifest_raw: dict[str, Any]
    signature: str
    chunk_size: int
    chunks: int
    folder: Path | None
    fd: int | None
    last_activity: float
    noop: bool = False
    received: set[int] = field(default_factory=set)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def warm_up(engine: Engine) -> float:
    """Run the engine on a zero input; return the median invoke time in ms."""
    x = np.zeros(engine.input_shape, dtype=engine.input_dtype)
    times = engine.time_invoke(x, runs=5, warmup=2)
    out = engine.invoke(x)
    if np.issubdtype(out.dtype, np.floating) and not np.all(np.isfinite(out)):
        raise Refused("the model's output on a zero input is not finite (NaN or inf)")
    return float(np.median(times))


class ModelReceiver:
    """Receives pushes for one device; see the module docstring for the threads."""

    def __init__(self, store: ModelStore, topics: Topics, *, trusted_keys: Iterable[KeySpec],
                 max_model_bytes: int, staging_timeout_s: float, delegate: DelegateSpec,
                 num_threads: int, publish_result: Callable[[dict[str, Any]], None],
                 on_ready: Callable[[InstalledModel, Engine], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.topics = topics
        self.trusted = load_trusted_keys(trusted_keys)
        self.max_model_bytes = max_model_bytes
        self.staging_timeout_s = staging_timeout_s
        self.delegate = delegate
        self.num_threads = num_threads
        self._publish = publish_result
        self._on_ready = on_ready
        self._clock = clock
        self._queue: queue.SimpleQueue[tuple[str, str, bytes] | None] = queue.SimpleQueue()
        self._pushes: dict[str, _Push] = {}
        self._finished: OrderedDict[str, str] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    # -- lifecycle (composition root) --------------------------------------------

    def filters(self) -> list[str]:
        """MQTT subscriptions to make (QoS 1) and route to ``handle``."""
        return self.topics.model_filters()

    def start(self) -> None:
        self.store.clean_staging(0)
        self._thread = threading.Thread(target=self._run, name="model-receiver", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if not self._thread.is_alive():  # else the worker still owns the push state
            for push in list(self._pushes.values()):
                self._drop(push)
        self._thread = None

    def handle(self, topic: str, payload: bytes) -> None:
        """Called on the MQTT network thread: classify and enqueue, nothing else."""
        via = self._via(topic)
        part = Topics.last_segment(topic)
        if via is None or part not in PARTS:
            return
        self._queue.put((via, part, bytes(payload)))
        self._idle.clear()  # after put: a race can only leave it clear until the next tick

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once every enqueued message has been processed (for tests and shutdown)."""
        return self._idle.wait(timeout)

    def _via(self, topic: str) -> str | None:
        if topic.startswith(f"{self.topics.base}/model/"):
            return "device"
        for g in self.topics.groups:
            if topic.startswith(f"{self.topics.group_base(g)}/model/"):
                return f"group:{g}"
        return None

    # -- worker -----------------------------------------------------------------

    def _run(self) -> None:
        tick = max(0.05, min(1.0, self.staging_timeout_s / 4))
        while True:
            try:
                item = self._queue.get(timeout=tick)
            except queue.Empty:
                self._expire()
                self._idle.set()
                continue
            if item is None:
                return
            try:
                self._dispatch(*item)
            except Exception as exc:  # a handler bug must not kill the receiver
                log.exception("model receiver: unexpected error handling %s", item[1])
                self._report_error(item, exc)
            self._expire()
            if self._queue.empty():
                self._idle.set()

    def _dispatch(self, via: str, part: str, payload: bytes) -> None:
        if part == "manifest":
            self._on_manifest(via, payload)
        elif part == "chunk":
            self._on_chunk(payload)
        else:
            self._on_commit(via, payload)

    def _report_error(self, item: tuple[str, str, bytes], exc: Exception) -> None:
        via, part, payload = item
        try:
            pid = decode_chunk(payload)[0] if part == "chunk" else push_id_of(
                json_object(payload, part))
        except Refused:
            return
        reason = f"agent error: {type(exc).__name__}: {exc}"
        push = self._pushes.get(pid)
        if push is not None:
            self._finish(push, RESULT_ERROR, reason)
        elif pid not in self._finished:
            self._finished[pid] = RESULT_ERROR
            self._result(pid, None, via, RESULT_ERROR, reason)

    # -- manifest -----------------------------------------------------------------

    def _on_manifest(self, via: str, payload: bytes) -> None:
        try:
            data = json_object(payload, "manifest")
            push_id = push_id_of(data)
        except Refused as exc:
            self._result(None, None, via, RESULT_REFUSED, str(exc))
            return
        if push_id in self._finished:
            return
        current = self._pushes.get(push_id)
        if current is not None:
            if (current.manifest_raw, current.chunk_size) == (data.get("manifest"),
                                                              data.get("chunk_size")):
                current.last_activity = self._clock()  # a QoS 1 duplicate: keep the chunks
                return
            self._drop(self._pushes.pop(push_id))
        try:
            push = self._open_push(push_id, via, data)
        except DeployError as exc:
            raw = data.get("manifest") if isinstance(data.get("manifest"), dict) else {}
            self._finished[push_id] = RESULT_REFUSED
            self._result(push_id, raw, via, RESULT_REFUSED, str(exc))
            return
        self._pushes[push_id] = push

    def _open_push(self, push_id: str, via: str, data: dict[str, Any]) -> _Push:
        raw = data.get("manifest")
        if not isinstance(raw, dict):
            raise Refused("manifest message has no 'manifest' object")
        try:
            manifest = parse_manifest(raw, origin="pushed manifest")
        except EdgeError as exc:
            raise Refused(str(exc)) from exc
        signature = data.get("signature")
        verify_manifest(raw, signature if isinstance(signature, str) else "", self.trusted)
        chunk_size, chunks = self._check_layout(manifest, data)
        push = _Push(push_id, via, manifest, raw, str(signature), chunk_size, chunks, None, None,
                     self._clock())
        active = self.store.active()
        if active is not None and active.manifest.sha256 == manifest.sha256 and (
                active.manifest.name, active.manifest.version) == (manifest.name,
                                                                   manifest.version):
            push.noop = True
            return push
        if len(self._pushes) >= MAX_PUSHES:
            raise Refused(f"{MAX_PUSHES} pushes are already in progress; try again later")
        self._check_disk(manifest.size_bytes)
        push.folder = self.store.new_staging(push_id)
        push.fd = os.open(push.folder / PART_FILE, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(push.fd, manifest.size_bytes)
        return push

    def _check_layout(self, manifest: ModelManifest, data: dict[str, Any]) -> tuple[int, int]:
        size = manifest.size_bytes
        if size > self.max_model_bytes:
            raise Refused(f"model is {size} bytes, over this device's limit of "
                          f"{self.max_model_bytes} bytes")
        if size == 0:
            raise Refused("model file is empty (size_bytes 0)")
        chunk_size, chunks = data.get("chunk_size"), data.get("chunks")
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise Refused(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if chunks != math.ceil(size / chunk_size):
            raise Refused(f"chunks is {chunks!r} but {size} bytes in chunks of {chunk_size} "
                          f"make {math.ceil(size / chunk_size)}")
        return chunk_size, chunks

    def _check_disk(self, size: int) -> None:
        self.store.staging_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.store.staging_dir).free
        if free < 2 * size:
            raise Refused(f"not enough disk space: {free} bytes free, need {2 * size}")

    # -- chunks -----------------------------------------------------------------

    def _on_chunk(self, payload: bytes) -> None:
        try:
            push_id, index, data = decode_chunk(payload)
        except Refused as exc:
            log.warning("model receiver: dropped a chunk: %s", exc)
            return
        push = self._pushes.get(push_id)
        if push is None:
            return
        push.last_activity = self._clock()
        if push.noop:
            return
        try:
            self._write_chunk(push, index, data)
        except Refused as exc:
            self._finish(push, RESULT_REFUSED, str(exc))

    def _write_chunk(self, push: _Push, index: int, data: bytes) -> None:
        if index >= push.chunks:
            raise Refused(f"chunk index {index} is beyond the {push.chunks} announced")
        offset = index * push.chunk_size
        expected = min(push.chunk_size, push.manifest.size_bytes - offset)
        if len(data) != expected:
            raise Refused(f"chunk {index} has {len(data)} bytes, expected {expected}")
        assert push.fd is not None
        os.pwrite(push.fd, data, offset)
        push.received.add(index)

    # -- commit -----------------------------------------------------------------

    def _on_commit(self, via: str, payload: bytes) -> None:
        try:
            push_id = push_id_of(json_object(payload, "commit"))
        except Refused as exc:
            self._result(None, None, via, RESULT_REFUSED, str(exc))
            return
        push = self._pushes.get(push_id)
        if push is None:
            if push_id not in self._finished:
                self._result(push_id, None, via, RESULT_REFUSED,
                             "commit for a push whose manifest never arrived (agent restarted "
                             "or the push expired); push again")
            return
        if push.noop:
            self._finish(push, RESULT_NOOP, f"version {push.manifest.version} is already active")
            return
        try:
            installed, engine, timings = self._verify_and_load(push)
        except Refused as exc:
            self._finish(push, RESULT_REFUSED, str(exc))
            return
        self._hand_over(push, installed, engine, timings)

    def _verify_and_load(self, push: _Push) -> tuple[InstalledModel, Engine, dict[str, float]]:
        missing = push.chunks - len(push.received)
        if missing:
            first = min(set(range(push.chunks)) - push.received)
            raise Refused(f"{missing} of {push.chunks} chunks missing (first: {first})")
        folder = self._seal(push)
        t0 = time.perf_counter()
        model_path = push.manifest.model_path(folder)
        try:
            engine = Engine(model_path, delegate=self.delegate, num_threads=self.num_threads)
            engine.check_manifest(push.manifest)
            load_ms = (time.perf_counter() - t0) * 1000
            invoke_ms = warm_up(engine)
        except EdgeError as exc:
            raise Refused(str(exc)) from exc
        try:
            installed = self.store.install(folder)
        except (EdgeError, OSError) as exc:
            raise Refused(f"install failed: {exc}") from exc
        return installed, engine, {"load_ms": round(load_ms, 2), "invoke_ms": round(invoke_ms, 3)}

    def _seal(self, push: _Push) -> Path:
        """fsync the received bytes, check them, and give them their final names."""
        assert push.fd is not None and push.folder is not None
        os.fsync(push.fd)
        push.close()
        folder = push.folder
        part = folder / PART_FILE
        digest = sha256_file(part)
        if digest != push.manifest.sha256:
            raise Refused(f"sha256 of the received bytes is {digest[:16]}..., the manifest says "
                          f"{push.manifest.sha256[:16]}...")
        target = push.manifest.model_path(folder)
        if target.resolve().parent != folder.resolve() or target.name in (MANIFEST_NAME,
                                                                          SIGNATURE_NAME):
            raise Refused(f"model file name {push.manifest.file!r} is not allowed")
        os.replace(part, target)
        atomic_write_bytes(folder / MANIFEST_NAME,
                           (json.dumps(push.manifest_raw, indent=2) + "\n").encode())
        atomic_write_bytes(folder / SIGNATURE_NAME, (push.signature + "\n").encode())
        return folder

    def _hand_over(self, push: _Push, installed: InstalledModel, engine: Engine,
                   timings: dict[str, float]) -> None:
        try:
            self._on_ready(installed, engine)
        except Exception as exc:
            log.exception("model receiver: on_ready failed for %s", installed.key)
            self._finish(push, RESULT_ERROR, f"the agent could not swap the model in: {exc}")
            return
        self.store.activate(installed, reason=f"push {push.push_id} via {push.via}")
        self._finish(push, RESULT_OK, None, timings)
        try:
            self.store.prune()
        except OSError as exc:
            log.warning("model store: prune failed: %s", exc)

    # -- endings ----------------------------------------------------------------

    def _expire(self) -> None:
        now = self._clock()
        for push in list(self._pushes.values()):
            if now - push.last_activity >= self.staging_timeout_s:
                self._finish(push, RESULT_REFUSED,
                             f"push abandoned: {len(push.received)} of {push.chunks} chunks and "
                             f"no commit within {self.staging_timeout_s:g} s")

    def _drop(self, push: _Push) -> None:
        push.close()
        if push.folder is not None:
            shutil.rmtree(push.folder, ignore_errors=True)

    def _finish(self, push: _Push, result: str, reason: str | None,
                extra: dict[str, Any] | None = None) -> None:
        self._pushes.pop(push.push_id, None)
        self._drop(push)
        self._finished[push.push_id] = result
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)
        self._result(push.push_id, push.manifest_raw, push.via, result, reason, extra)

    def _result(self, push_id: str | None, manifest: dict[str, Any] | None, via: str,
                result: str, reason: str | None, extra: dict[str, Any] | None = None) -> None:
        manifest = manifest or {}
        payload = {"push_id": push_id, "device": self.topics.device_id,
                   "name": manifest.get("name"), "version": manifest.get("version"),
                   "sha256": manifest.get("sha256"), "result": result, "reason": reason,
                   "via": via, "ts": time.time(), **(extra or {})}
        log_fn = log.info if result in (RESULT_OK, RESULT_NOOP) else log.warning
        log_fn("model push %s (%s %s): %s%s", push_id, payload["name"], payload["version"],
               result, f": {reason}" if reason else "")
        try:
            self._publish(payload)
        except Exception:
            log.exception("model receiver: publishing the result failed")
