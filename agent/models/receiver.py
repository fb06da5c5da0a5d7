"""Agent side of model delivery: receive a pushed model, verify it, try it, hand it over.

``handle()`` runs on the MQTT network thread and only enqueues (bounded, drops counted); one
worker thread owns all push state, writes chunks, verifies, tries the model in a child process
(``trial.py``), loads it with the one loader and hands it to the model switch. The worker
survives any error, its error reporting included; if it dies anyway the next message restarts
it, counted in ``health()``. Every outcome is one ``model_result_body`` message.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from agent.contract import (
    RESULT_ERROR,
    RESULT_NOOP,
    RESULT_OK,
    RESULT_REFUSED,
    RESULT_SUCCESS,
    Topics,
)
from agent.errors import DeployError, EdgeError
from agent.manifest import ModelManifest, parse_manifest
from agent.models.delivery_queue import DeliveryQueue, Item
from agent.models.loader import ModelLoader, WarmEngine
from agent.models.signing import KeySpec, load_trusted_keys
from agent.models.staging import StagedPush
from agent.models.store import InstalledModel, ModelStore
from agent.models.trial import DEFAULT_TIMEOUT_S, try_in_child
from agent.models.wire import (
    PARTS,
    PushOffer,
    Refused,
    check_layout,
    decode_chunk,
    json_object,
    parse_offer,
    push_id_of,
    verify_offer,
)
from agent.payloads import model_result_body

log = logging.getLogger(__name__)

MAX_PUSHES = 4
FINISHED_MEMORY = 256


class ModelTarget(Protocol):
    """Where a verified, warmed model goes (the model switch)."""

    def admit(self, manifest: ModelManifest, rollback: bool) -> None: ...

    def swap_in(self, installed: InstalledModel, warm: WarmEngine, reason: str) -> None: ...


class ModelReceiver:
    """Receives pushes for one device; see the module docstring for the threads."""

    def __init__(self, store: ModelStore, topics: Topics, *, trusted_keys: Iterable[KeySpec],
                 max_model_bytes: int, staging_timeout_s: float, loader: ModelLoader,
                 target: ModelTarget, publish_result: Callable[[dict[str, Any]], None],
                 hold_frames: Callable[[], None] = lambda: None,
                 release_frames: Callable[[], None] = lambda: None,
                 on_restart: Callable[[], None] = lambda: None,
                 trial_timeout_s: float | None = DEFAULT_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.topics = topics
        self.trusted = load_trusted_keys(trusted_keys)
        self.max_model_bytes = max_model_bytes
        self.staging_timeout_s = staging_timeout_s
        self.loader = loader
        self.target = target
        self.trial_timeout_s = trial_timeout_s  # None: no trial (tests with fake engines)
        self._publish = publish_result
        self._hold, self._release, self._on_restart = hold_frames, release_frames, on_restart
        self._clock, self._wall = clock, wall_clock
        self._queue = DeliveryQueue()
        self.restarts = 0
        self._pushes: dict[str, StagedPush] = {}
        self._finished: OrderedDict[str, str] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._idle = threading.Event()
        self._idle.set()

    # -- lifecycle (composition root) --------------------------------------------

    def filters(self) -> list[str]:
        """MQTT subscriptions to make (QoS 1) and route to ``handle``."""
        return self.topics.model_filters()

    def start(self) -> None:
        self.store.clean_staging(0)
        self._start_worker()

    def _start_worker(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-receiver", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self._stopping = True
        self._queue.stop_marker(timeout)
        self._thread.join(timeout)
        if not self._thread.is_alive():  # else the worker still owns the push state
            for push in list(self._pushes.values()):
                push.drop()
        self._thread = None

    def handle(self, topic: str, payload: bytes) -> None:
        """Called on the MQTT network thread: classify and enqueue, nothing else."""
        via = self._via(topic)
        part = Topics.last_segment(topic)
        if via is None or part not in PARTS:
            return
        if self._thread is not None and not self._thread.is_alive() and not self._stopping:
            self.restarts += 1
            log.error("model receiver: the worker thread had died; restarted (%d)", self.restarts)
            self._start_worker()
            self._on_restart()
        if self._queue.offer((via, part, bytes(payload))):
            self._idle.clear()  # after put: a race can only leave it clear until the next tick

    def health(self) -> dict[str, Any]:
        alive = self._thread is not None and self._thread.is_alive()
        return {"worker": "running" if alive else "stopped", "restarts": self.restarts,
                "dropped": self._queue.dropped, "queued": self._queue.qsize(),
                "pushes": len(self._pushes)}

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
                item = self._queue.take(tick)
            except queue.Empty:
                self._guarded(self._expire)
                self._idle.set()
                continue
            if item is None:
                return
            self._guarded(self._dispatch, item)
            self._guarded(self._expire)
            if self._queue.empty():
                self._idle.set()

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn``; an error is logged and reported, and never leaves the worker."""
        try:
            fn(*args)
        except Exception as exc:  # a handler bug must not kill the receiver
            log.exception("model receiver: unexpected error in %s", fn.__name__)
            try:
                if args:
                    self._report_error(args[0], exc)
            except Exception:
                log.exception("model receiver: reporting that error failed too")

    def _dispatch(self, item: Item) -> None:
        via, part, payload = item
        if part == "manifest":
            self._on_manifest(via, payload)
        elif part == "chunk":
            self._on_chunk(payload)
        else:
            self._on_commit(via, payload)

    def _report_error(self, item: Item, exc: Exception) -> None:
        via, part, payload = item
        try:
            pid = decode_chunk(payload)[0] if part == "chunk" else push_id_of(
                json_object(payload, part))
        except Refused:
            return
        reason = f"agent error: {type(exc).__name__}: {str(exc)[:300]}"
        push = self._pushes.get(pid)
        if push is not None:
            self._finish(push, RESULT_ERROR, reason)
        elif pid not in self._finished:
            self._remember(pid, RESULT_ERROR)
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
        if current is not None and current.raw_message == data:
            current.last_activity = self._clock()  # a QoS 1 duplicate: keep the chunks
            return
        try:
            offer = parse_offer(data)
            verify_offer(offer, self.trusted, device_id=self.topics.device_id,
                         groups=self.topics.groups, now=self._wall())
        except Refused as exc:
            if current is not None:  # an unverified message never cancels a push
                self._result(None, None, via, RESULT_REFUSED, f"a manifest reusing push id "
                             f"{push_id} (in progress) was ignored: {exc}")
            else:
                self._refuse(push_id, data.get("manifest"), via, str(exc))
            return
        if current is not None:  # a validly signed new offer under the same id replaces it
            self._pushes.pop(push_id).drop()
        try:
            push = self._open_push(offer, via)
        except DeployError as exc:
            self._refuse(push_id, offer.manifest, via, str(exc))
            return
        if push is not None:
            push.raw_message = data
            self._pushes[push_id] = push

    def _open_push(self, offer: PushOffer, via: str) -> StagedPush | None:
        try:
            manifest = parse_manifest(offer.manifest, origin="pushed manifest")
        except EdgeError as exc:
            raise Refused(str(exc)) from exc
        check_layout(offer, self.max_model_bytes)
        active = self.store.active()
        if active is not None and (active.manifest.name, active.manifest.version,
                                   active.manifest.sha256) == (manifest.name, manifest.version,
                                                               manifest.sha256):
            self._remember(offer.push_id, RESULT_NOOP)  # answered now: takes no push slot
            self._result(offer.push_id, offer.manifest, via, RESULT_NOOP,
                         f"version {manifest.version} is already active")
            return None
        self.target.admit(manifest, offer.rollback)
        if len(self._pushes) >= MAX_PUSHES:
            raise Refused(f"{MAX_PUSHES} pushes are already in progress; try again later")
        self._check_disk(manifest.size_bytes)
        push = StagedPush(offer, manifest, via, self._clock())
        push.open(self.store.new_staging(offer.push_id))
        return push

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
        try:
            push.write_chunk(index, data)
        except Refused as exc:
            self._finish(push, RESULT_REFUSED, str(exc))

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
        self._hold()  # the trial child and the load compete for the CPU: queue frames
        try:
            try:
                folder, timings = self._seal_and_try(push)
            except Refused as exc:
                self._finish(push, RESULT_REFUSED, str(exc))
                return
            self._load_and_swap(push, folder, timings)
        finally:
            self._release()  # whatever happened, the inbox hold ends here

    def _seal_and_try(self, push: StagedPush) -> tuple[Path, dict[str, float]]:
        """Check the bytes, then load, check and warm them in a child process."""
        push.check_complete()
        folder = push.seal()
        if self.trial_timeout_s is None:
            return folder, {}
        t0 = time.perf_counter()
        try:
            try_in_child(push.manifest.model_path(folder), push.offer.manifest,
                         self.loader.settings, self.trial_timeout_s)
        except EdgeError as exc:
            raise Refused(str(exc)) from exc
        return folder, {"trial_ms": round((time.perf_counter() - t0) * 1000, 1)}

    def _load_and_swap(self, push: StagedPush, folder: Path, timings: dict[str, float]) -> None:
        try:
            warm = self.loader.load(push.manifest.model_path(folder), push.manifest)
            fresh = self.store.find(push.manifest) is None
            installed = self.store.install(folder)
        except (EdgeError, OSError) as exc:
            self._finish(push, RESULT_REFUSED, str(exc))
            return
        try:
            self.target.swap_in(installed, warm, reason=f"push {push.push_id} via {push.via}")
        except Exception as exc:
            log.exception("model receiver: the swap failed for %s", installed.key)
            if fresh:
                self.store.remove(installed)
            result = RESULT_REFUSED if isinstance(exc, Refused) else RESULT_ERROR
            self._finish(push, result, f"the agent could not swap the model in: {exc}")
            return
        self._finish(push, RESULT_OK, None, {**timings, **warm.timings()})
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
                             f"push abandoned: {push.received} of {push.offer.chunks} chunks "
                             f"and no commit within {self.staging_timeout_s:g} s")

    def _remember(self, push_id: str, result: str) -> None:
        self._finished[push_id] = result
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    def _refuse(self, push_id: str, manifest: Any, via: str, reason: str) -> None:
        self._remember(push_id, RESULT_REFUSED)
        self._result(push_id, manifest if isinstance(manifest, dict) else None, via,
                     RESULT_REFUSED, reason)

    def _finish(self, push: StagedPush, result: str, reason: str | None,
                timings: dict[str, float] | None = None) -> None:
        self._pushes.pop(push.push_id, None)
        push.drop()
        self._remember(push.push_id, result)
        self._result(push.push_id, push.offer.manifest, push.via, result, reason, timings)

    def _result(self, push_id: str | None, manifest: dict[str, Any] | None, via: str,
                result: str, reason: str | None,
                timings: dict[str, float] | None = None) -> None:
        active = self.store.active()
        body = model_result_body(result, device=self.topics.device_id, push_id=push_id,
                                 model=manifest, reason=reason, via=via,
                                 active_version=active.manifest.version if active else None,
                                 timings=timings)
        log_fn = log.info if result in RESULT_SUCCESS else log.warning
        log_fn("model push %s (%s %s): %s%s", push_id, body["name"], body["version"], result,
               f": {reason}" if reason else "")
        try:
            self._publish(body)
        except Exception:
            log.exception("model receiver: publishing the result failed")
