"""Commands over MQTT: topic -> handler table (built once) -> validated payload -> reply.

Every request gets a reply on ``<base>/cmd/<name>/result`` when it carries an ``id`` (and on
the MQTT 5 response topic with its correlation data when present); every malformed request
gets a log line with the reason. No handler error escapes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent.contract import Topics
from agent.errors import CommandError

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024

Handler = Callable[[dict[str, Any]], Any]


class Inbound(Protocol):
    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None


@dataclass(frozen=True)
class CommandRequest:
    name: str
    id: str | int | None
    args: dict[str, Any]


def parse_request(name: str, payload: bytes) -> CommandRequest:
    """Raise CommandError naming what is wrong; the request id is kept when it can be read."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8")) if payload else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"payload is not UTF-8 JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise CommandError(f"payload must be a JSON object, got {type(body).__name__}")
    req_id = body.pop("id", None)
    if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, str | int)):
        raise CommandError("id must be a string or an integer")
    return CommandRequest(name, req_id, body)


def _peek_id(payload: bytes) -> str | int | None:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    rid = body.get("id") if isinstance(body, dict) else None
    return rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None


class CommandRouter:
    def __init__(self, topics: Topics, handlers: dict[str, Handler],
                 reply: Callable[[str, bytes, bytes | None], None]) -> None:
        self.topics = topics
        self.handlers = dict(handlers)
        self._reply = reply
        self.handled = 0
        self.rejected = 0

    def handle(self, msg: Inbound) -> None:
        name = Topics.last_segment(msg.topic)
        try:
            req = parse_request(name, msg.payload)
        except CommandError as exc:
            self.rejected += 1
            log.warning("command %s rejected: %s", msg.topic, exc)
            self._send(msg, name, _peek_id(msg.payload), {"ok": False, "error": str(exc)})
            return
        handler = self.handlers.get(name)
        if handler is None:
            self.rejected += 1
            reason = f"unknown command {name!r}; known: {', '.join(sorted(self.handlers))}"
            log.warning("command %s rejected: %s", msg.topic, reason)
            self._send(msg, name, req.id, {"ok": False, "error": reason})
            return
        self._send(msg, name, req.id, self._call(handler, req))

    def _call(self, handler: Handler, req: CommandRequest) -> dict[str, Any]:
        try:
            result = handler(req.args)
            self.handled += 1
            return {"ok": True, "result": result}
        except CommandError as exc:
            self.rejected += 1
            log.warning("command %s refused: %s", req.name, exc)
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            self.rejected += 1
            log.exception("command %s failed", req.name)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    def _send(self, msg: Inbound, name: str, req_id: str | int | None,
              body: dict[str, Any]) -> None:
        if req_id is None and msg.response_topic is None:
            return
        payload = json.dumps({"id": req_id, "device": self.topics.device_id, **body},
                             default=str).encode()
        if name in self.handlers or req_id is not None:
            self._reply(self.topics.cmd_result(_safe_name(name)), payload, None)
        if msg.response_topic:
            self._reply(msg.response_topic, payload, msg.correlation_data)


def _safe_name(name: str) -> str:
    return name if name and all(c.isalnum() or c in "_-." for c in name) else "invalid"


def require(args: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in args:
        raise CommandError(f"missing argument {key!r}")
    value = args[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CommandError(f"argument {key!r} has the wrong type: {type(value).__name__}")
    return value
