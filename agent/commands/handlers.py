"""The command handlers of a running agent, as one table."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import cv2
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.commands.router import Handler, require
from agent.errors import CommandError, EdgeError

if TYPE_CHECKING:
    from agent.app import AgentApp


class RuntimeSettings(BaseModel):
    """The subset of the config that may be changed while running."""

    model_config = ConfigDict(extra="forbid")
    top_k: int | None = Field(default=None, ge=1, le=100)
    min_score: float | None = Field(default=None, ge=0.0, le=1.0)
    max_frame_age_ms: int | None = Field(default=None, ge=1)
    stats_interval_s: float | None = Field(default=None, gt=0)
    paused: bool | None = None


def _settings(app: AgentApp) -> dict[str, Any]:
    post = app.pipeline.model.post
    return {"top_k": post.top_k, "min_score": post.min_score,
            "max_frame_age_ms": round(app.pipeline.max_frame_age_s * 1000),
            "stats_interval_s": app.health.stats_interval_s, "paused": app.pipeline.paused}


def build_command_handlers(app: AgentApp) -> dict[str, Handler]:
    def ping(args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "ts": time.time(), "state": app.port.state,
                "uptime_s": round(time.monotonic() - app.started_mono, 1)}

    def pause(args: dict[str, Any]) -> dict[str, Any]:
        app.pipeline.pause()
        return {"paused": True}

    def resume(args: dict[str, Any]) -> dict[str, Any]:
        app.pipeline.resume()
        return {"paused": False}

    def snapshot(args: dict[str, Any]) -> dict[str, Any]:
        frame = app.pipeline.last_frame
        if frame is None or frame.data.dtype.kind != "u":
            raise CommandError("no frame captured yet")
        quality = args.get("quality", 85)
        if not isinstance(quality, int) or not 1 <= quality <= 100:
            raise CommandError("quality must be an integer from 1 to 100")
        ok, jpeg = cv2.imencode(".jpg", frame.data, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise CommandError("the frame could not be encoded as JPEG")
        topic = app.topics.snapshot()
        app.port.publish(topic, jpeg.tobytes(), qos=1)
        return {"topic": topic, "bytes": int(jpeg.size), "source": frame.source,
                "frame_ts": frame.ts, "shape": list(frame.data.shape)}

    def config(args: dict[str, Any]) -> dict[str, Any]:
        action = args.get("action", "get")
        if action == "get":
            return _settings(app)
        if action != "set":
            raise CommandError(f"action must be 'get' or 'set', got {action!r}")
        values = require(args, "values", dict)
        try:
            new = RuntimeSettings.model_validate(values)
        except ValidationError as exc:
            raise CommandError("; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            ) from exc
        _apply(app, new)
        return _settings(app)

    def model(args: dict[str, Any]) -> dict[str, Any]:
        action = args.get("action", "current")
        if action == "current":
            m = app.pipeline.model.manifest
            return {"name": m.name, "version": m.version, "sha256": m.sha256,
                    "quantize": m.quantize, "runtime": app.runtime_info()}
        if action == "list":
            active = app.pipeline.model.manifest.sha256
            return {"models": [{**im.describe(), "active": im.manifest.sha256 == active}
                               for im in app.store.list()]}
        if action == "rollback":
            return _rollback(app)
        raise CommandError(f"action must be current, list or rollback, got {action!r}")

    return {"ping": ping, "pause": pause, "resume": resume, "snapshot": snapshot,
            "config": config, "model": model}


def _apply(app: AgentApp, new: RuntimeSettings) -> None:
    post = app.pipeline.model.post
    if new.top_k is not None:
        post.top_k = max(1, min(new.top_k, len(post.labels)))
    if new.min_score is not None:
        post.min_score = new.min_score
    if new.max_frame_age_ms is not None:
        app.pipeline.max_frame_age_s = new.max_frame_age_ms / 1000.0
    if new.stats_interval_s is not None:
        app.health.stats_interval_s = new.stats_interval_s
    if new.paused is not None:
        (app.pipeline.pause if new.paused else app.pipeline.resume)()


def _rollback(app: AgentApp) -> dict[str, Any]:
    previous = app.store.previous()
    if previous is None:
        raise CommandError("no previous model to roll back to")
    try:
        loaded = app.load(previous)
    except EdgeError as exc:
        raise CommandError(f"previous model {previous.manifest.version} does not load: "
                           f"{exc}") from exc
    app.pipeline.swap(loaded)
    app.store.rollback(reason="rollback command")
    app.refresh_status()
    m = loaded.manifest
    return {"name": m.name, "version": m.version, "sha256": m.sha256}
