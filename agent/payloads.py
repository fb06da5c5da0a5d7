"""Builders of the published payloads (field names from agent/contract.py), the one
decoder of inbound JSON (``decode_json``) that every parser of untrusted bytes uses, and the
guards for untrusted documents: a bounded ``shown_value`` for error lines and
``check_expanded_size`` against YAML alias bombs."""

from __future__ import annotations

import json
import math
import time
from functools import lru_cache
from typing import Any

from agent import __version__
from agent.contract import LabelsField, StatusField
from agent.errors import ConfigError, PayloadError
from agent.records import Result

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def decode_json(payload: bytes, what: str, max_bytes: int | None = None) -> Any:
    """Decode untrusted bytes as UTF-8 JSON. Any failure, whatever the input (invalid UTF-8,
    bad syntax, nesting deep enough to exhaust the recursion limit, more than ``max_bytes``),
    is a ``PayloadError`` naming ``what`` and the cause; nothing else escapes."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise PayloadError(f"{what}: {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        return json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except RecursionError as exc:
        raise PayloadError(f"{what}: JSON nested too deeply") from exc
    except ValueError as exc:
        raise PayloadError(f"{what}: not JSON ({exc})") from exc


def shown_value(value: Any, limit: int = 80) -> str:
    """An untrusted value for an error line: bounded in depth and width, so that a huge or
    self-referencing value costs no more to print than a small one."""
    text = _bounded_repr(value, depth=3)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _bounded_repr(value: Any, depth: int, width: int = 4) -> str:
    if isinstance(value, dict):
        if depth <= 0:
            return "{...}"
        items = [f"{_bounded_repr(k, depth - 1)}: {_bounded_repr(v, depth - 1)}"
                 for k, v in list(value.items())[:width]]
        return "{" + ", ".join(items + ["..."] * (len(value) > width)) + "}"
    if isinstance(value, list):
        if depth <= 0:
            return "[...]"
        items = [_bounded_repr(v, depth - 1) for v in value[:width]]
        return "[" + ", ".join(items + ["..."] * (len(value) > width)) + "]"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:60]) + "..."
    if isinstance(value, bytes) and len(value) > 60:
        return repr(value[:60]) + "..."
    return repr(value)


def shown_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_expanded_size(raw: Any, where: str, limit: int) -> None:
    """Refuse a document whose aliases expand past ``limit`` values (a "billion
    laughs" bomb: PyYAML shares aliased nodes, but validating walks every expanded copy) or
    refer to themselves. Linear in the distinct nodes: each one's expanded size is memoized."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError([f"{where}: an alias refers to itself"])
        open_nodes.add(key)
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise ConfigError([f"{where}: expands to more than {limit} values "
                                   f"through aliases"])
        open_nodes.discard(key)
        sizes[key] = total
        return total

    try:
        size(raw)
    except RecursionError as exc:
        raise ConfigError([f"{where}: nested too deeply"]) from exc


@lru_cache(maxsize=4096)
def _json_str(text: str) -> str:
    """A JSON string literal; labels, sources, names and run ids repeat, so they are cached."""
    return _dumps(text)


def labels_payload(result: Result, run_id: str, now: float | None = None,
                   mono_now: float | None = None) -> bytes:
    """One labels message. Latencies use the monotonic clock; timestamps the wall clock.

    Written with one f-string (about 3x faster than building a dict and encoding it); the
    bytes are the same as ``labels_body`` (field names from ``contract.LabelsField``) through
    the JSON encoder, which is still used when a number is not finite. tests/test_payloads.py
    proves the two identical, so a field renamed in the contract fails until it is renamed
    here too.
    """
    now = time.time() if now is None else now
    mono_now = time.monotonic() if mono_now is None else mono_now
    r = result
    nums = (round(now, 6), round(r.frame_ts, 6), round(r.inference_ms, 3),
            round(r.preprocess_ms, 3), round((mono_now - r.frame_mono) * 1000.0, 3))
    if not all(map(math.isfinite, nums)) or not all(
            math.isfinite(ls.score) for ls in r.labels):
        return _dumps(labels_body(result, run_id, now, mono_now)).encode()
    labels = ",".join(f'{{"label":{_json_str(ls.label)},"index":{ls.index!r},'
                      f'"score":{ls.score!r}}}' for ls in r.labels)
    return (f'{{"seq":{r.seq!r},"run_id":{_json_str(run_id)},"ts":{nums[0]!r},'
            f'"frame_ts":{nums[1]!r},"source":{_json_str(r.source)},'
            f'"frame_index":{r.frame_index!r},"model":{{"name":{_json_str(r.model_name)},'
            f'"version":{_json_str(r.model_version)}}},"labels":[{labels}],'
            f'"inference_ms":{nums[2]!r},"preprocess_ms":{nums[3]!r},'
            f'"capture_to_publish_ms":{nums[4]!r}}}').encode()


def labels_body(result: Result, run_id: str, now: float, mono_now: float) -> dict[str, Any]:
    """The labels message as a dict (the reference for ``labels_payload``)."""
    f = LabelsField
    return {
        f.SEQ: result.seq,
        f.RUN_ID: run_id,
        f.TS: round(now, 6),
        f.FRAME_TS: round(result.frame_ts, 6),
        f.SOURCE: result.source,
        f.FRAME_INDEX: result.frame_index,
        f.MODEL: {f.MODEL_NAME: result.model_name, f.MODEL_VERSION: result.model_version},
        f.LABELS: [{f.LABEL: ls.label, f.INDEX: ls.index, f.SCORE: ls.score}
                   for ls in result.labels],
        f.INFERENCE_MS: round(result.inference_ms, 3),
        f.PREPROCESS_MS: round(result.preprocess_ms, 3),
        f.CAPTURE_TO_PUBLISH_MS: round((mono_now - result.frame_mono) * 1000.0, 3),
    }


def status_body(state: str, *, device: str, groups: list[str], model: dict[str, Any] | None,
                since: float, runtime: dict[str, Any] | None, reason: str | None,
                sources: dict[str, str] | None = None,
                delivery: dict[str, Any] | None = None) -> dict[str, Any]:
    f = StatusField
    return {
        f.STATE: state,
        f.DEVICE: device,
        f.GROUPS: groups,
        f.MODEL: model,
        f.AGENT_VERSION: __version__,
        f.SINCE: round(since, 3),
        f.RUNTIME: runtime,
        f.DELEGATE: (runtime or {}).get("delegate"),
        f.SOURCES: sources or {},
        f.DELIVERY: delivery,
        f.REASON: reason,
        f.TS: round(time.time(), 3),
    }


def encode(body: dict[str, Any]) -> bytes:
    return _dumps(body).encode()


def model_result_body(result: str, *, device: str, push_id: str | None,
                      model: dict[str, Any] | None, reason: str | None, via: str,
                      active_version: str | None,
                      timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The one ``<base>/model/result`` message: a push's outcome (``contract.PUSH_*``) or a
    rollback. ``model`` is the manifest the result is about (name, version, sha256 are taken),
    ``active_version`` the version serving once it is published."""
    m = {k: v for k, v in (model or {}).items() if isinstance(v, str)}
    return {"push_id": push_id, "device": device, "name": m.get("name"),
            "version": m.get("version"), "sha256": m.get("sha256"), "result": result,
            "reason": reason, "via": via, "active_version": active_version,
            "ts": round(time.time(), 3), **(timings or {})}
