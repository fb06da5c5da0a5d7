"""``RunningAgentControl``: the ``AgentControl`` the command handlers get, built by the
composition root from the pieces it owns (never the app object itself)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.commands.handlers import RuntimeSettings
from agent.contract import Topics
from agent.errors import CommandError, EdgeError
from agent.health import HealthMonitor
from agent.inference.pipeline import LoadedModel, Pipeline
from agent.models.store import ModelStore
from agent.mqtt.port import MqttPort
from agent.records import Frame


@dataclass
class RunningAgentControl:
    pipeline: Pipeline
    port: MqttPort
    topics: Topics
    store: ModelStore
    health: HealthMonitor
    started_mono: float
    rollback: Callable[[str], LoadedModel]  # the model switch's: loads the one way, swaps
    runtime_info: Callable[[], dict[str, Any] | None]
    refresh_status: Callable[[], None]

    def state(self) -> str:
        return self.port.state

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_mono

    def pause(self) -> None:
        self.pipeline.pause()
        self.refresh_status()

    def resume(self) -> None:
        self.pipeline.resume()
        self.refresh_status()

    def last_frame(self) -> Frame | None:
        return self.pipeline.last_frame

    def publish_snapshot(self, jpeg: bytes) -> str:
        topic = self.topics.snapshot()
        self.port.publish(topic, jpeg, qos=1)
        return topic

    def settings(self) -> dict[str, Any]:
        post = self.pipeline.model.post
        return {"top_k": post.top_k, "min_score": post.min_score,
                "max_frame_age_ms": round(self.pipeline.max_frame_age_s * 1000),
                "stats_interval_s": self.health.stats_interval_s,
                "paused": self.pipeline.paused}

    def apply_settings(self, new: RuntimeSettings) -> None:
        post = self.pipeline.model.post
        if new.top_k is not None:
            post.top_k = max(1, min(new.top_k, len(post.labels)))
        if new.min_score is not None:
            post.min_score = new.min_score
        if new.max_frame_age_ms is not None:
            self.pipeline.max_frame_age_s = new.max_frame_age_ms / 1000.0
        if new.stats_interval_s is not None:
            self.health.stats_interval_s = new.stats_interval_s
        if new.paused is not None:
            (self.pause if new.paused else self.resume)()

    def current_model(self) -> dict[str, Any]:
        m = self.pipeline.model.manifest
        return {"name": m.name, "version": m.version, "sha256": m.sha256,
                "quantize": m.quantize, "runtime": self.runtime_info()}

    def list_models(self) -> list[dict[str, Any]]:
        active = self.pipeline.model.manifest.sha256
        return [{**im.describe(), "active": im.manifest.sha256 == active}
                for im in self.store.list()]

    def rollback_model(self) -> dict[str, Any]:
        try:
            loaded = self.rollback("rollback command")
        except EdgeError as exc:
            raise CommandError(str(exc)) from exc
        m = loaded.manifest
        return {"name": m.name, "version": m.version, "sha256": m.sha256}
