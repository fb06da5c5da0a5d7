"""The model switch: which model serves, and every change of it (STYLE point 6).

A new model is built and warmed off the hot path (by ``ModelLoader``), handed to the pipeline
as one reference, and recorded in the store only once the inference thread uses it; on any
failure the old model keeps serving. Start-up, a push, the ``model rollback`` command and the
pipeline's automatic rollback all come through here, so each reports the same result message
and keeps the run-time ``top_k`` / ``min_score`` a ``config set`` chose.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.contract import RESULT_ROLLED_BACK
from agent.errors import DeployError, EdgeError
from agent.inference.pipeline import LoadedModel, build_loaded_model
from agent.manifest import ModelManifest
from agent.models.loader import ModelLoader, WarmEngine
from agent.models.store import InstalledModel, ModelStore
from agent.models.versions import VersionFloor
from agent.models.wire import Refused
from agent.payloads import model_result_body

log = logging.getLogger(__name__)

DEFAULT_SWAP_TIMEOUT_S = 10.0
VIA_AUTOMATIC, VIA_COMMAND = "automatic", "command"


class SwapTarget(Protocol):
    """What the switch needs of the pipeline."""

    @property
    def model(self) -> LoadedModel: ...

    def swap(self, model: LoadedModel, timeout: float = ...) -> bool: ...


class SwapError(DeployError):
    """The new model could not be put in use; the old one still serves."""


class ModelSwitch:
    def __init__(self, loader: ModelLoader, store: ModelStore, *, device_id: str,
                 top_k: int, min_score: float,
                 publish_result: Callable[[dict[str, Any]], None],
                 on_changed: Callable[[LoadedModel, LoadedModel], None],
                 swap_timeout_s: float = DEFAULT_SWAP_TIMEOUT_S) -> None:
        self.loader = loader
        self.store = store
        self.floor = VersionFloor(store.root)
        self.device_id = device_id
        self.swap_timeout_s = swap_timeout_s
        self._defaults = (top_k, min_score)
        self._publish = publish_result
        self._on_changed = on_changed
        self._first: LoadedModel | None = None
        self.pipeline: SwapTarget | None = None

    @property
    def active(self) -> LoadedModel:
        if self.pipeline is not None:
            return self.pipeline.model
        if self._first is None:
            raise DeployError("no model is loaded yet")
        return self._first

    # -- start-up ---------------------------------------------------------------

    def start(self, chosen: InstalledModel, configured: Path) -> LoadedModel:
        """Load the store's choice; if it fails, the configured model (seeded) instead."""
        try:
            self._first = self.load(chosen)
        except EdgeError as exc:
            fallback = self.store.seed(configured)
            if fallback.key == chosen.key:
                raise
            log.error("active model %s does not load (%s); starting with the configured %s",
                      chosen.key, exc, fallback.key)
            self._first = self.load(fallback)
            self.store.activate(fallback, reason=f"active model failed to load: {exc}")
        self.floor.note(self._first.manifest.version)
        return self._first

    def attach(self, pipeline: SwapTarget) -> None:
        self.pipeline = pipeline

    def load(self, installed: InstalledModel) -> LoadedModel:
        """Build, check and warm ``installed`` off the hot path, with the current settings."""
        warm = self.loader.load(installed.model_path, installed.manifest)
        return self._wrap(installed, warm)

    def _wrap(self, installed: InstalledModel, warm: WarmEngine) -> LoadedModel:
        top_k, min_score = self._defaults
        if self._first is not None:  # keep what `config set` changed at run time
            post = self.active.post
            top_k, min_score = post.top_k, post.min_score
        return build_loaded_model(installed.manifest, installed.folder, warm.engine, top_k,
                                  min_score)

    # -- a push -----------------------------------------------------------------

    def admit(self, manifest: ModelManifest, rollback: bool) -> None:
        """Refuse, before any byte is staged, a model this agent could never serve."""
        current = self.active.manifest
        if manifest.task != current.task:
            raise Refused(f"the agent runs a {current.task} model with "
                          f"{'camera' if current.task == 'frame' else 'mqtt'} sources; "
                          f"a {manifest.task} model cannot replace it")
        installed = [m.manifest.version for m in self.store.list()]
        try:
            self.floor.check(manifest.version, rollback, [current.version, *installed])
        except ValueError as exc:
            raise Refused(str(exc)) from exc

    def swap_in(self, installed: InstalledModel, warm: WarmEngine, reason: str) -> None:
        """Serve a pushed, warmed model; return once the inference thread uses it."""
        self.admit(installed.manifest, rollback=True)  # the task may not change meanwhile
        self._swap(self._wrap(installed, warm))
        self.store.activate(installed, reason=reason)
        self.floor.note(installed.manifest.version)

    def _swap(self, loaded: LoadedModel) -> None:
        before = self.active
        if self.pipeline is None:
            raise SwapError("the pipeline is not running")
        if not self.pipeline.swap(loaded, timeout=self.swap_timeout_s):
            raise SwapError(f"the inference thread did not take the new model within "
                            f"{self.swap_timeout_s:g} s (busy in the old model?)")
        self._on_changed(before, loaded)

    # -- rollbacks --------------------------------------------------------------

    def rollback(self, reason: str = "rollback command") -> LoadedModel:
        """The ``model rollback`` command: load the previous version the one way, then swap."""
        previous = self.store.previous()
        if previous is None:
            raise DeployError("no previous model to roll back to")
        bad = self.active
        try:
            loaded = self.load(previous)
        except EdgeError as exc:
            raise DeployError(f"previous model {previous.manifest.version} does not load: "
                              f"{exc}") from exc
        self._swap(loaded)
        self.store.rollback(reason=reason)
        self._report(bad, loaded, reason, VIA_COMMAND)
        return loaded

    def on_automatic_rollback(self, bad: LoadedModel, good: LoadedModel, reason: str) -> None:
        """Called by the pipeline (inference thread) after it swapped ``good`` back in."""
        good.post.top_k = max(1, min(bad.post.top_k, len(good.post.labels)))
        good.post.min_score = bad.post.min_score
        try:
            self.store.rollback(reason=f"automatic: {reason}")
        except EdgeError as exc:
            log.error("store rollback failed: %s", exc)
        self._on_changed(bad, good)
        self._report(bad, good, reason, VIA_AUTOMATIC)

    def _report(self, bad: LoadedModel, good: LoadedModel, reason: str, via: str) -> None:
        m = bad.manifest
        body = model_result_body(RESULT_ROLLED_BACK, device=self.device_id, push_id=None,
                                 model={"name": m.name, "version": m.version,
                                        "sha256": m.sha256},
                                 reason=reason, via=via, active_version=good.manifest.version)
        try:
            self._publish(body)
        except Exception:
            log.exception("model switch: publishing the rollback result failed")
