"""decode_json: the one decoder of untrusted JSON survives any input with a PayloadError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import PayloadError
from agent.payloads import decode_json


@pytest.mark.parametrize(("payload", "reason"), [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"a":' * 50_000, "nested too deeply"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{", "not JSON"),
    (b"", "not JSON"),
    (b"x" * 101, "exceeds the limit of 100"),
])
def test_bad_payloads_are_payload_errors_naming_what(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason) as info:
        decode_json(payload, "model/commit", max_bytes=100 if len(payload) == 101 else None)
    assert str(info.value).startswith("model/commit: ")


def test_good_json_decodes() -> None:
    assert decode_json(b'{"id": 1, "x": [1, 2]}', "cmd") == {"id": 1, "x": [1, 2]}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_give_a_value_or_a_payload_error(payload: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode_json(payload, "any")
