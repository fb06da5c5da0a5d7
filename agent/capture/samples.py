"""Samples for sequence models: parse MQTT payloads and cut sliding windows per stream.

A payload on ``<base>/in/<stream>`` carries ``k`` timesteps of ``features`` values, as

- a JSON list of ``k * features`` numbers,
- a JSON list of ``k`` lists of ``features`` numbers, or
- raw little-endian float32 bytes (``k * features * 4`` of them).

A payload whose first non-blank byte is ``[`` (or ``{``, to say that an object is not a
sample) is JSON, with one exception: when it is not valid JSON, its length is a multiple
of 4 and it holds a byte outside ASCII, it is float32 bytes whose first value happens to
start with 0x5B (about 1 in 256 random payloads would). Text JSON is ASCII, so malformed
JSON is still reported as malformed JSON.

Streams beyond ``max_streams``: the stream idle the longest is evicted (its partial window
is lost, counted in ``evicted``). Refusing instead would let stale stream names lock out a
new sensor until a restart; evicting keeps memory bounded either way.

``SampleSource`` is one configured ``mqtt`` source: it takes the port's messages, cuts them
with a windower for the model now serving, and puts each window in the inbox as a ``Frame``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np

from agent.capture.inbox import EvictionLog, StreamIndex
from agent.config import MqttSourceConfig
from agent.contract import Topics
from agent.errors import SampleError
from agent.manifest import WindowSpec
from agent.records import Frame

log = logging.getLogger(__name__)

FLOAT32_MAX = float(np.finfo(np.float32).max)
STREAM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NOT_PLAIN_NUMBERS = (b'"', b"true", b"false", b"null")


class _Ring:
    """The last ``length`` timesteps of one stream.

    Each row is written twice (at ``i`` and ``i + length``) so the newest window is always
    one contiguous slice, copied out with a single ``np.copy``.
    """

    __slots__ = ("buf", "filled", "length", "since", "write")

    def __init__(self, length: int, features: int) -> None:
        self.buf = np.zeros((2 * length, features), np.float32)
        self.length = length
        self.write = 0
        self.filled = 0
        self.since = 0

    def push(self, rows: np.ndarray) -> None:
        n = len(rows)
        if n > self.length:
            rows = rows[-self.length:]
        m = len(rows)
        idx = (self.write + np.arange(m)) % self.length
        self.buf[idx] = rows
        self.buf[idx + self.length] = rows
        self.write = (self.write + n) % self.length
        self.filled = min(self.length, self.filled + n)

    def window(self) -> np.ndarray:
        return self.buf[self.write:self.write + self.length].copy()


class SequenceWindower:
    """Per-stream sliding windows of ``window.length`` timesteps, every ``window.stride`` steps.

    Not meant for concurrent ``add`` calls on one stream from several threads, but safe if it
    happens (one lock).
    """

    def __init__(self, window: WindowSpec, *, max_payload_bytes: int = 65536,
                 max_streams: int = 64) -> None:
        if max_payload_bytes < 4 or max_streams < 1:
            raise ValueError("max_payload_bytes must be >= 4 and max_streams >= 1")
        self.window = window
        self.max_payload_bytes = max_payload_bytes
        self.max_streams = max_streams
        self._rings: OrderedDict[str, _Ring] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0
        self._evictions = EvictionLog("samples")

    @property
    def streams(self) -> list[str]:
        """Stream names, idle the longest first."""
        with self._lock:
            return list(self._rings)

    def add(self, stream: str, payload: bytes) -> list[np.ndarray]:
        """Append a sample to ``stream``; return the windows it completed (oldest first).

        Raises ``SampleError`` naming what was wrong; a rejected sample changes nothing.
        """
        if not STREAM_NAME.match(stream):
            raise SampleError(f"stream name {stream!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        rows = self.parse(payload)
        with self._lock:
            ring = self._ring(stream)
            return self._advance(ring, rows)

    def drop(self, stream: str) -> bool:
        """Forget a stream's buffered timesteps; True if it existed."""
        with self._lock:
            return self._rings.pop(stream, None) is not None

    def _ring(self, stream: str) -> _Ring:
        ring = self._rings.get(stream)
        if ring is not None:
            self._rings.move_to_end(stream)
            return ring
        if len(self._rings) >= self.max_streams:
            old, _ = self._rings.popitem(last=False)
            self.evicted += 1
            self._evictions.evicted(old, self.max_streams)  # logged once per interval
        ring = _Ring(self.window.length, self.window.features)
        self._rings[stream] = ring
        return ring

    def _advance(self, ring: _Ring, rows: np.ndarray) -> list[np.ndarray]:
        """Push ``rows`` in pieces that end exactly where a window is due."""
        out: list[np.ndarray] = []
        length, stride = self.window.length, self.window.stride
        i = 0
        while i < len(rows):
            filling = ring.filled < length
            need = length - ring.filled if filling else stride - ring.since
            n = min(need, len(rows) - i)
            ring.push(rows[i:i + n])
            i += n
            if not filling:
                ring.since += n
            if n == need:
                out.append(ring.window())
                ring.since = 0
        return out

    # -- parsing ----------------------------------------------------------------

    def parse(self, payload: bytes) -> np.ndarray:
        """Return the sample as a float32 array of shape (k, features)."""
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise SampleError(f"sample must be bytes, got {type(payload).__name__}")
        payload = bytes(payload)
        size = len(payload)
        if size == 0:
            raise SampleError("empty sample")
        if size > self.max_payload_bytes:
            raise SampleError(f"sample is {size} bytes; the limit is {self.max_payload_bytes}")
        if _looks_like_json(payload):
            try:
                obj = json.loads(payload)
            except (ValueError, RecursionError) as exc:
                if size % 4 == 0 and not payload.isascii():
                    return self._from_float32(payload)
                raise SampleError(f"not valid JSON: {_json_problem(exc)}") from exc
            plain = not any(token in payload for token in _NOT_PLAIN_NUMBERS)
            return self._from_json(obj, plain)
        return self._from_float32(payload)

    def _from_float32(self, payload: bytes) -> np.ndarray:
        size = len(payload)
        if size % 4:
            raise SampleError(f"not JSON and not float32 bytes ({size} bytes is not a "
                              f"multiple of 4)")
        features = self.window.features
        count = size // 4
        if count % features:
            raise SampleError(f"sample has {count} float32 values; expected a multiple of "
                              f"{features} features")
        values = np.frombuffer(payload, dtype="<f4")
        _check_finite(values)
        return values.astype(np.float32, copy=False).reshape(-1, features)

    def _from_json(self, obj: object, plain: bool) -> np.ndarray:
        features = self.window.features
        if not isinstance(obj, list):
            raise SampleError(f"a JSON sample must be a list, got {_kind(obj)}")
        if not obj:
            raise SampleError("sample is an empty list")
        if isinstance(obj[0], list):
            for i, row in enumerate(obj):
                if not isinstance(row, list):
                    raise SampleError(f"item at {i} is {_kind(row)}; expected a list of "
                                      f"{features} numbers like the first")
                if len(row) != features:
                    raise SampleError(f"timestep {i} has {len(row)} values; expected "
                                      f"{features} features")
        elif len(obj) % features:
            raise SampleError(f"sample has {len(obj)} values; expected a multiple of "
                              f"{features} features")
        values = _numbers(obj, plain).reshape(-1)
        _check_finite(values)
        return values.astype(np.float32).reshape(-1, features)



class InboundSample(Protocol):
    topic: str
    payload: bytes


class FrameSink(Protocol):
    def put(self, frame: Frame) -> None: ...


class SampleSource:
    """One ``mqtt`` source of the config: samples on ``<base>/in/<stream>`` for each of its
    streams, windowed for the model that serves now (``current_window``); a model with another
    window starts every stream afresh. Rejected samples are logged and counted, never raised.
    """

    def __init__(self, config: MqttSourceConfig, topics: Topics, sink: FrameSink,
                 current_window: Callable[[], WindowSpec | None]) -> None:
        self.config = config
        self._topics = topics
        self._sink = sink
        self._current_window = current_window
        self._windower: SequenceWindower | None = None
        self._lock = threading.Lock()
        self._window_counts = StreamIndex(config.max_streams)  # bounded like the windower
        self.accepted = 0
        self.rejected = 0
        self._evicted_before = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def evicted(self) -> int:
        """Streams evicted for ``max_streams``, over every windower this source had."""
        windower = self._windower
        return self._evicted_before + (windower.evicted if windower else 0)

    def filters(self) -> list[str]:
        return [self._topics.inputs(stream) for stream in self.config.streams]

    def handle(self, msg: InboundSample) -> None:
        stream = Topics.last_segment(msg.topic)
        try:
            windows = self._windower_now().add(stream, msg.payload)
        except SampleError as exc:
            self.rejected += 1
            log.warning("sample on %s rejected: %s", msg.topic, exc)
            return
        self.accepted += 1
        now, mono = time.time(), time.monotonic()
        for w in windows:
            self._sink.put(Frame(stream, self._window_counts.next(stream), now, mono, w))

    def _windower_now(self) -> SequenceWindower:
        window = self._current_window()
        if window is None:
            raise SampleError("the model serving now takes no samples")
        with self._lock:
            windower = self._windower
            if windower is None or (windower.window is not window
                                    and windower.window != window):
                if windower is not None:
                    self._evicted_before += windower.evicted
                windower = self._windower = SequenceWindower(
                    window, max_payload_bytes=self.config.max_payload_bytes,
                    max_streams=self.config.max_streams)
            return windower


def _numbers(obj: list, plain: bool) -> np.ndarray:
    """``obj`` as float64, or a ``SampleError`` naming the first value that is not a number."""
    if plain:
        try:
            arr = np.array(obj, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            pass
        else:
            return arr
    flat = [v for row in obj for v in row] if isinstance(obj[0], list) else obj
    for i, v in enumerate(flat):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise SampleError(f"value at {i} is not a number (got {json.dumps(v)[:40]})")
        try:
            float(v)
        except OverflowError as exc:
            raise SampleError(f"value at {i} is out of range") from exc
    return np.array(flat, dtype=np.float64)


def _check_finite(values: np.ndarray) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        i = int(np.argmin(finite))
        raise SampleError(f"value at {i} is {values[i]}; values must be finite")
    if values.dtype != np.float32 and len(values):
        too_big = np.abs(values) > FLOAT32_MAX
        if too_big.any():
            i = int(np.argmax(too_big))
            raise SampleError(f"value at {i} ({values[i]:.3g}) is outside the float32 range")


def _looks_like_json(payload: bytes) -> bool:
    first = payload[:1]
    if first.isspace():
        first = payload.lstrip()[:1]
    return first in (b"[", b"{")


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at byte {exc.pos}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 at byte {exc.start}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _kind(obj: object) -> str:
    return {dict: "an object", str: "a string", list: "a list", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(
        type(obj), f"a {type(obj).__name__}")
