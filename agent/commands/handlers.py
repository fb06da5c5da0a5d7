"""The command handlers of a running agent, as one table over a small ``AgentControl``.

Each command's arguments are a strict pydantic model: unknown fields, strings or booleans
for numbers, and non-finite numbers are refused with a reason naming the field.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Protocol

import cv2
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.commands.router import Handler
from agent.config import PipelineConfig, PublishConfig
from agent.errors import CommandError
from agent.records import Frame

MAX_FRAME_AGE_MS = 3_600_000
MAX_STATS_INTERVAL_S = 86_400.0


class StrictArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _like_config(section: type[BaseModel], key: str, *extra: Any) -> Any:
    """The config file's type and bounds for ``key``, optional, with extra bounds."""
    info = section.model_fields[key]
    return Annotated[(info.annotation | None, *info.metadata, *extra)]  # type: ignore[misc]


class RuntimeSettings(StrictArgs):
    """The subset of the config that may be changed while running, with the config file's
    types and bounds (plus finite upper bounds where the file has none)."""

    top_k: _like_config(PublishConfig, "top_k") = None  # type: ignore[valid-type]
    min_score: _like_config(PublishConfig, "min_score") = None  # type: ignore[valid-type]
    max_frame_age_ms: _like_config(  # type: ignore[valid-type]
        PipelineConfig, "max_frame_age_ms", Field(le=MAX_FRAME_AGE_MS)) = None
    stats_interval_s: _like_config(  # type: ignore[valid-type]
        PublishConfig, "stats_interval_s", Field(le=MAX_STATS_INTERVAL_S)) = None
    paused: bool | None = None


class AgentControl(Protocol):
    """What a command may do to the running agent; nothing else is reachable from here."""

    def state(self) -> str: ...
    def uptime_s(self) -> float: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def last_frame(self) -> Frame | None: ...
    def publish_snapshot(self, jpeg: bytes) -> str: ...
    def settings(self) -> dict[str, Any]: ...
    def apply_settings(self, new: RuntimeSettings) -> None: ...
    def current_model(self) -> dict[str, Any]: ...
    def list_models(self) -> list[dict[str, Any]]: ...
    def rollback_model(self) -> dict[str, Any]: ...


class NoArgs(StrictArgs):
    pass


class SnapshotArgs(StrictArgs):
    quality: int = Field(default=85, ge=1, le=100)


class ConfigArgs(StrictArgs):
    action: Literal["get", "set"] = "get"
    values: dict[str, Any] | None = None


class ModelArgs(StrictArgs):
    action: Literal["current", "list", "rollback"] = "current"


def validate_args(model: type[StrictArgs], args: dict[str, Any], where: str = "") -> Any:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise CommandError(validation_reason(exc, where)) from exc


def validation_reason(exc: ValidationError, where: str = "") -> str:
    parts = []
    for e in exc.errors():
        key = ".".join([where, *(str(p) for p in e["loc"])] if where else
                       [str(p) for p in e["loc"]]) or "(payload)"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{key}: {msg}")
    return "; ".join(parts)


def build_command_handlers(agent: AgentControl) -> dict[str, Handler]:
    def ping(args: dict[str, Any]) -> dict[str, Any]:
        validate_args(NoArgs, args)
        return {"pong": True, "ts": time.time(), "state": agent.state(),
                "uptime_s": round(agent.uptime_s(), 1)}

    def pause(args: dict[str, Any]) -> dict[str, Any]:
        validate_args(NoArgs, args)
        agent.pause()
        return {"paused": True}

    def resume(args: dict[str, Any]) -> dict[str, Any]:
        validate_args(NoArgs, args)
        agent.resume()
        return {"paused": False}

    def snapshot(args: dict[str, Any]) -> dict[str, Any]:
        quality = validate_args(SnapshotArgs, args).quality
        frame = agent.last_frame()
        if frame is None or frame.data.dtype.kind != "u":
            raise CommandError("no frame captured yet")
        ok, jpeg = cv2.imencode(".jpg", frame.data, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise CommandError("the frame could not be encoded as JPEG")
        topic = agent.publish_snapshot(jpeg.tobytes())
        return {"topic": topic, "bytes": int(jpeg.size), "source": frame.source,
                "frame_ts": frame.ts, "shape": list(frame.data.shape)}

    def config(args: dict[str, Any]) -> dict[str, Any]:
        req = validate_args(ConfigArgs, args)
        if req.action == "get":
            if req.values is not None:
                raise CommandError("values: only with action 'set'")
            return agent.settings()
        if req.values is None:
            raise CommandError("values: required with action 'set'")
        if not req.values:
            raise CommandError("values: empty; name at least one setting")
        agent.apply_settings(validate_args(RuntimeSettings, req.values, "values"))
        return agent.settings()

    def model(args: dict[str, Any]) -> dict[str, Any]:
        action = validate_args(ModelArgs, args).action
        if action == "current":
            return agent.current_model()
        if action == "list":
            return {"models": agent.list_models()}
        return agent.rollback_model()

    return {"ping": ping, "pause": pause, "resume": resume, "snapshot": snapshot,
            "config": config, "model": model}
