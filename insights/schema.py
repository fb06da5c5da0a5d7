"""The lake's tables: their Arrow schemas and how one MQTT message becomes one row.

Field names come from ``agent/contract.py``. The device is taken from the topic, never
from the payload (a device must not be able to write rows in another device's name).
Every parser either returns a row or raises ``BadInput`` with a kind and a reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from agent.contract import FleetTopics, LabelsField, ModelResultField, StatsRecord, StatusField
from agent.errors import PayloadError
from agent.payloads import decode_json

LABELS, STATS, STATUS, MODEL_EVENTS, QUARANTINE = (
    "labels", "stats", "status", "model_events", "quarantine")
TABLES = (LABELS, STATS, STATUS, MODEL_EVENTS, QUARANTINE)
TOPIC_TABLES = {FleetTopics.LABELS: LABELS, FleetTopics.STATS: STATS,
                FleetTopics.STATUS: STATUS, FleetTopics.MODEL_RESULT: MODEL_EVENTS}
# The numbers of the stats record, each a column (its flags, per-source table and time are not).
STATS_TS = "ts"
STATS_NUMBERS = tuple(f.name for f in dataclasses.fields(StatsRecord) if f.name != STATS_TS
                      and str(f.type).replace(" | None", "") in ("int", "float"))

MAX_PAYLOAD = 256 * 1024      # a labels message is about 400 bytes; anything this big is hostile
MAX_TOPK = 64
MAX_TEXT = 256
QUARANTINE_KEEP = 4096        # bytes of a bad payload kept for inspection
TS_MIN, TS_MAX = 946684800.0, 4102444800.0  # 2000-01-01 .. 2100-01-01: a sane Unix time

TOPK_TYPE = pa.list_(pa.struct([("label", pa.string()), ("index", pa.int32()),
                                ("score", pa.float64())]))
F = LabelsField
SCHEMAS: dict[str, pa.Schema] = {
    LABELS: pa.schema([
        ("device", pa.string()), ("run_id", pa.string()), ("seq", pa.int64()),
        ("ts", pa.float64()), ("frame_ts", pa.float64()), ("source", pa.string()),
        ("frame_index", pa.int64()), ("model_name", pa.string()),
        ("model_version", pa.string()), ("top_label", pa.string()),
        ("top_score", pa.float64()), ("topk", TOPK_TYPE), ("inference_ms", pa.float64()),
        ("preprocess_ms", pa.float64()), ("capture_to_publish_ms", pa.float64()),
        ("received_ts", pa.float64())]),
    STATS: pa.schema([("device", pa.string()), ("ts", pa.float64())]
                     + [(n, pa.float64()) for n in STATS_NUMBERS]
                     + [("key", pa.string()), ("received_ts", pa.float64())]),
    STATUS: pa.schema([
        ("device", pa.string()), ("ts", pa.float64()), ("state", pa.string()),
        ("model_name", pa.string()), ("model_version", pa.string()),
        ("model_sha256", pa.string()), ("agent_version", pa.string()),
        ("since", pa.float64()), ("reason", pa.string()), ("retained", pa.bool_()),
        ("key", pa.string()), ("received_ts", pa.float64())]),
    MODEL_EVENTS: pa.schema([
        ("device", pa.string()), ("ts", pa.float64()), ("push_id", pa.string()),
        ("result", pa.string()), ("name", pa.string()), ("version", pa.string()),
        ("active_version", pa.string()), ("reason", pa.string()), ("via", pa.string()),
        ("key", pa.string()), ("received_ts", pa.float64())]),
    QUARANTINE: pa.schema([
        ("received_ts", pa.float64()), ("topic", pa.string()), ("device", pa.string()),
        ("kind", pa.string()), ("reason", pa.string()), ("payload_size", pa.int64()),
        ("payload", pa.binary())]),
}
# The natural key a redelivered message repeats: views and compaction keep one row per key.
KEYS: dict[str, tuple[str, ...]] = {
    LABELS: ("device", "run_id", "seq"), STATS: ("device", "key"), STATUS: ("device", "key"),
    MODEL_EVENTS: ("device", "key"), QUARANTINE: ()}


# DuckDB types of the columns an older file may lack (a list column is never added later).
DUCKDB_TYPES = {"double": "DOUBLE", "int64": "BIGINT", "int32": "INTEGER", "string": "VARCHAR",
                "bool": "BOOLEAN", "binary": "BLOB"}


def columns_sql(table: str, present: set[str]) -> str:
    """Today's columns of ``table`` from files that have ``present``: a column older files
    lack (the agent's stats grow) reads as NULL of its type."""
    return ", ".join(
        f.name if f.name in present else f"CAST(NULL AS {DUCKDB_TYPES[str(f.type)]}) AS {f.name}"
        for f in SCHEMAS[table])


def natural_key(table: str, row: dict[str, Any]) -> tuple:
    """What a redelivered copy of the message repeats (``KEYS``), with its table."""
    return (table, *(row[k] for k in KEYS[table]))


def first_copies_sql(table: str, source: str) -> str:
    """SQL keeping the first-received row of each natural key of ``table`` from ``source``
    (one text for DuckDB and Spark; used by the views and by compaction)."""
    columns = ", ".join(SCHEMAS[table].names)
    if not KEYS[table]:
        return f"SELECT {columns} FROM {source}"
    return (f"SELECT {columns} FROM (SELECT {columns}, row_number() OVER (PARTITION BY "
            f"{', '.join(KEYS[table])} ORDER BY received_ts) AS first_copy FROM {source}) "
            f"copies WHERE first_copy = 1")


class BadInput(ValueError):
    """A message the lake will not take as data; ``kind`` groups it for counting and logs."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind, self.reason = kind, reason


@dataclass(frozen=True)
class Route:
    """Where a topic's messages go: the table and the device named by the topic."""

    table: str
    device: str


def route(topic: str, prefix: str) -> Route:
    """``<prefix>/<device>/<labels|stats|status|model/result>`` -> table and device."""
    fleet = FleetTopics(prefix)
    for suffix, table in TOPIC_TABLES.items():
        device = fleet.device_of(topic, suffix)
        if device is not None and device not in ("+", "#"):
            if len(device) > MAX_TEXT:
                raise BadInput("topic", f"device id of {len(device)} characters")
            return Route(table, device)
    raise BadInput("topic", f"{topic[:200]!r} is not a device's labels, stats, status or "
                            f"model/result topic under {prefix!r}")


def decode(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise BadInput("too_large", f"payload of {len(payload)} bytes (limit {MAX_PAYLOAD})")
    try:
        body = decode_json(payload, "payload")
    except PayloadError as exc:
        raise BadInput("not_json", str(exc)) from None
    if not isinstance(body, dict):
        raise BadInput("not_object", f"a JSON {type(body).__name__}, not an object")
    return body


def _number(body: dict[str, Any], name: str, *, required: bool = True,
            integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadInput("missing_field", f"{name!r} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        raise BadInput("wrong_type", f"{name!r} must be {'an integer' if integer else 'a number'}"
                                     f", got {type(value).__name__}")
    if not integer and not math.isfinite(value):
        raise BadInput("wrong_type", f"{name!r} is not finite")
    if integer and not -(2 ** 63) <= value < 2 ** 63:
        raise BadInput("wrong_type", f"{name!r} does not fit in 64 bits")
    return value


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadInput("missing_field" if value is None else "wrong_type",
                       f"{name!r} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise BadInput("wrong_type", f"{name!r} is {len(value)} characters (limit {MAX_TEXT})")
    return value


def _timestamp(body: dict[str, Any], name: str, *, required: bool = True) -> float | None:
    ts = _number(body, name, required=required)
    if ts is not None and not TS_MIN <= ts <= TS_MAX:
        raise BadInput("bad_time", f"{name!r} = {ts!r} is not a Unix time in 2000..2100")
    return None if ts is None else float(ts)


def _topk(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = body.get(F.LABELS)
    if not isinstance(items, list) or not items:
        raise BadInput("missing_field" if items is None else "wrong_type",
                       f"{F.LABELS!r} must be a non-empty list")
    if len(items) > MAX_TOPK:
        raise BadInput("wrong_type", f"{F.LABELS!r} has {len(items)} entries (limit {MAX_TOPK})")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise BadInput("wrong_type", f"{F.LABELS!r} entries must be objects")
        index = _number(item, F.INDEX, integer=True)
        if not 0 <= index < 2 ** 31:
            raise BadInput("wrong_type", f"label index {index} out of range")
        out.append({"label": _text(item, F.LABEL), "index": index,
                    "score": float(_number(item, F.SCORE))})
    return out


def labels_row(device: str, body: dict[str, Any], received: float) -> dict[str, Any]:
    model = body.get(F.MODEL)
    if not isinstance(model, dict):
        raise BadInput("missing_field" if model is None else "wrong_type",
                       f"{F.MODEL!r} must be an object with name and version")
    seq = _number(body, F.SEQ, integer=True)
    if seq < 0:
        raise BadInput("wrong_type", f"{F.SEQ!r} is negative")
    topk = _topk(body)
    return {"device": device, "run_id": _text(body, F.RUN_ID), "seq": seq,
            "ts": _timestamp(body, F.TS), "frame_ts": _timestamp(body, F.FRAME_TS),
            "source": _text(body, F.SOURCE), "frame_index": _number(
                body, F.FRAME_INDEX, required=False, integer=True),
            "model_name": _text(model, F.MODEL_NAME),
            "model_version": _text(model, F.MODEL_VERSION),
            "top_label": topk[0]["label"], "top_score": topk[0]["score"], "topk": topk,
            "inference_ms": _number(body, F.INFERENCE_MS, required=False),
            "preprocess_ms": _number(body, F.PREPROCESS_MS, required=False),
            "capture_to_publish_ms": _number(body, F.CAPTURE_TO_PUBLISH_MS, required=False),
            "received_ts": received}


def payload_key(payload: bytes) -> str:
    """The key of a message without a natural one: the same bytes are the same message."""
    return hashlib.blake2b(payload, digest_size=12).hexdigest()


def stats_row(device: str, body: dict[str, Any], received: float) -> dict[str, Any]:
    row: dict[str, Any] = {"device": device, "ts": _timestamp(body, STATS_TS)}
    for name in STATS_NUMBERS:
        value = _number(body, name, required=False)
        row[name] = None if value is None else float(value)
    return row


def status_row(device: str, body: dict[str, Any], received: float) -> dict[str, Any]:
    S = StatusField
    model = body.get(S.MODEL)
    if model is not None and not isinstance(model, dict):
        raise BadInput("wrong_type", f"{S.MODEL!r} must be an object or null")
    model = model or {}
    return {"device": device, "ts": _timestamp(body, S.TS, required=False),
            "state": _text(body, S.STATE), "model_name": _text(model, S.MODEL_NAME,
                                                               required=False),
            "model_version": _text(model, S.MODEL_VERSION, required=False),
            "model_sha256": _text(model, S.MODEL_SHA256, required=False),
            "agent_version": _text(body, S.AGENT_VERSION, required=False),
            "since": _timestamp(body, S.SINCE, required=False),
            "reason": _clip(body.get(S.REASON))}


def model_event_row(device: str, body: dict[str, Any], received: float) -> dict[str, Any]:
    M = ModelResultField
    return {"device": device, "ts": _timestamp(body, M.TS, required=False),
            "push_id": _text(body, M.PUSH_ID, required=False), "result": _text(body, M.RESULT),
            "name": _text(body, M.NAME, required=False),
            "version": _text(body, M.VERSION, required=False),
            "active_version": _text(body, M.ACTIVE_VERSION, required=False),
            "reason": _clip(body.get(M.REASON)), "via": _text(body, M.VIA, required=False)}


def _clip(value: Any, limit: int = 2000) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)[:limit]
    return text[:limit]


ROW_BUILDERS = {LABELS: labels_row, STATS: stats_row, STATUS: status_row,
                MODEL_EVENTS: model_event_row}


def to_row(route_: Route, payload: bytes, received: float, retained: bool) -> dict[str, Any]:
    """The row for one message (raises ``BadInput``)."""
    body = decode(payload)
    row = ROW_BUILDERS[route_.table](route_.device, body, received)
    if route_.table != LABELS:
        row["key"] = payload_key(payload)
        row["received_ts"] = received
    if route_.table == STATUS:
        row["retained"] = retained
    return row


def quarantine_row(topic: str, device: str | None, bad: BadInput, payload: bytes,
                   received: float) -> dict[str, Any]:
    return {"received_ts": received, "topic": topic[:1024], "device": device, "kind": bad.kind,
            "reason": bad.reason[:2000], "payload_size": len(payload),
            "payload": bytes(payload[:QUARANTINE_KEEP])}


def arrow_table(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMAS[table])
