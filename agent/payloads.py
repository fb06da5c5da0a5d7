"""Builders of the published payloads (field names from agent/contract.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from agent import __version__
from agent.records import Result

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def labels_payload(result: Result, run_id: str, now: float | None = None,
                   mono_now: float | None = None) -> bytes:
    """One labels message. Latencies use the monotonic clock; timestamps the wall clock."""
    now = time.time() if now is None else now
    mono_now = time.monotonic() if mono_now is None else mono_now
    body = {
        "seq": result.seq,
        "run_id": run_id,
        "ts": round(now, 6),
        "frame_ts": round(result.frame_ts, 6),
        "source": result.source,
        "frame_index": result.frame_index,
        "model": {"name": result.model_name, "version": result.model_version},
        "labels": [{"label": ls.label, "index": ls.index, "score": ls.score}
                   for ls in result.labels],
        "inference_ms": round(result.inference_ms, 3),
        "preprocess_ms": round(result.preprocess_ms, 3),
        "capture_to_publish_ms": round((mono_now - result.frame_mono) * 1000.0, 3),
    }
    return _dumps(body).encode()


def status_body(state: str, *, device: str, groups: list[str], model: dict[str, Any] | None,
                since: float, runtime: dict[str, Any] | None, reason: str | None,
                sources: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "state": state,
        "device": device,
        "groups": groups,
        "model": model,
        "agent_version": __version__,
        "since": round(since, 3),
        "runtime": runtime,
        "delegate": (runtime or {}).get("delegate"),
        "sources": sources or {},
        "reason": reason,
        "ts": round(time.time(), 3),
    }


def encode(body: dict[str, Any]) -> bytes:
    return _dumps(body).encode()
