"""Commands over MQTT: topic -> handler table (built once) -> validated payload -> reply.

Every request that carries a readable ``id`` gets a reply on ``<base>/cmd/<name>/result``;
a request with an MQTT 5 response topic also gets one there, with its correlation data, when
that topic lies under the device's own ``cmd/+/result`` tree or a configured filter. A request
with neither gets no reply, only a log line. A retained command is never obeyed: it would
run again at every start and reconnect. No handler error escapes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from paho.mqtt.client import topic_matches_sub

from agent.contract import Topics
from agent.errors import CommandError, PayloadError
from agent.payloads import decode_json

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024

Handler = Callable[[dict[str, Any]], Any]
RequestId = str | int


class Inbound(Protocol):
    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None
    retain: bool


@dataclass(frozen=True)
class CommandRequest:
    name: str
    id: RequestId | None
    args: dict[str, Any]


def _valid_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def parse_request(name: str, payload: bytes) -> CommandRequest:
    """Raise CommandError naming what is wrong; the request id is kept when it can be read."""
    if not payload:
        raise CommandError("empty payload (a retained command being cleared?); a command "
                           "is a JSON object, at least {}")
    try:
        body = decode_json(payload, "payload", MAX_COMMAND_BYTES)
    except PayloadError as exc:
        raise CommandError(str(exc)) from exc
    if not isinstance(body, dict):
        raise CommandError(f"payload must be a JSON object, got {type(body).__name__}")
    req_id = body.pop("id", None)
    if req_id is not None and not _valid_id(req_id):
        raise CommandError("id must be a string or an integer")
    return CommandRequest(name, req_id, body)


def peek_id(payload: bytes) -> RequestId | None:
    """The top-level ``id`` of a JSON object that may not decode as a whole (invalid UTF-8,
    nesting past the recursion limit, oversize): a flat scan that never recurses."""
    text = payload[:MAX_COMMAND_BYTES * 2].decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    i, n, depth = 0, len(text), 0
    expect_key = False
    while i < n:
        c = text[i]
        if c == '"':
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                return None
            if depth == 1 and expect_key and value == "id":
                return _scalar_after_colon(decoder, text, end)
            expect_key = False
            i = end
            continue
        if c in "{[":
            depth += 1
            expect_key = c == "{" and depth == 1
        elif c in "}]":
            depth -= 1
        elif c == "," and depth == 1:
            expect_key = True
        elif depth == 0 and not c.isspace():
            return None
        i += 1
    return None


def _scalar_after_colon(decoder: json.JSONDecoder, text: str, end: int) -> RequestId | None:
    j = end
    while j < len(text) and text[j] in " \t\r\n":
        j += 1
    if j >= len(text) or text[j] != ":":
        return None
    j += 1
    while j < len(text) and text[j] in " \t\r\n":
        j += 1
    if j < len(text) and text[j] in "{[":
        return None
    try:
        value, _ = decoder.raw_decode(text, j)
    except ValueError:
        return None
    return value if _valid_id(value) else None


class CommandRouter:
    def __init__(self, topics: Topics, handlers: dict[str, Handler],
                 reply: Callable[[str, bytes, bytes | None], None], *,
                 response_topic_filters: Sequence[str] = ()) -> None:
        self.topics = topics
        self.handlers = dict(handlers)
        self._reply = reply
        self._response_filters = (topics.cmd_result("+"), f"{topics.cmd_result('+')}/#",
                                  *response_topic_filters)
        self.handled = 0
        self.rejected = 0
        self.ignored = 0

    def handle(self, msg: Inbound) -> None:
        name = Topics.last_segment(msg.topic)
        if msg.retain:
            self.ignored += 1
            log.warning("command %s ignored: it is retained (a retained command would run "
                        "again at every start and reconnect; publish commands unretained)",
                        msg.topic)
            return
        try:
            req = parse_request(name, msg.payload)
        except CommandError as exc:
            self._refuse(msg, name, peek_id(msg.payload), str(exc))
            return
        handler = self.handlers.get(name)
        if handler is None:
            reason = f"unknown command {name!r}; known: {', '.join(sorted(self.handlers))}"
            self._refuse(msg, name, req.id, reason)
            return
        if req.id is None and not msg.response_topic:
            log.warning("command %s has no id: it runs, but no reply is sent", msg.topic)
        self._send(msg, name, req.id, self._call(handler, req))

    def _refuse(self, msg: Inbound, name: str, req_id: RequestId | None, reason: str) -> None:
        self.rejected += 1
        silent = req_id is None and not msg.response_topic
        suffix = " (no readable id: no reply sent)" if silent else ""
        log.warning("command %s rejected: %s%s", msg.topic, reason, suffix)
        self._send(msg, name, req_id, {"ok": False, "error": reason})

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

    def _send(self, msg: Inbound, name: str, req_id: RequestId | None,
              body: dict[str, Any]) -> None:
        response = msg.response_topic
        if req_id is None and not response:
            return
        payload = json.dumps({"id": req_id, "device": self.topics.device_id, **body},
                             default=str).encode()
        if req_id is not None:
            self._reply(self.topics.cmd_result(_safe_name(name)), payload, None)
        if response and self._response_allowed(response):
            self._reply(response, payload, msg.correlation_data)
        elif response:
            log.warning("command %s: response topic %r refused: not under %s", msg.topic,
                        response[:200], " or ".join(self._response_filters))

    def _response_allowed(self, topic: str) -> bool:
        if any(c in topic for c in "+#\0") or len(topic) > 1024:
            return False
        return any(topic_matches_sub(f, topic) for f in self._response_filters)


def _safe_name(name: str) -> str:
    return name if name and all(c.isalnum() or c in "_-." for c in name) else "invalid"
