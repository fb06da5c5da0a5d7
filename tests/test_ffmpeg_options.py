"""Per-source FFmpeg options reach OpenCV at open time and nowhere else."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from agent.capture.sources import CameraOptions, open_capture
from agent.config import parse_config
from agent.errors import ConfigError
from tests.test_config import GOOD, with_change

ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


class SeenAtOpen:
    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def __call__(self, target: str | int, api: int, params: Sequence[int]) -> object:
        self.seen.append(os.environ.get(ENV))
        return self

    def isOpened(self) -> bool:
        return True

    def release(self) -> None:
        pass


def test_options_are_set_for_the_open_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    factory = SeenAtOpen()
    open_capture(CameraOptions(name="ipcam", uri="rtsp://127.0.0.1:8554/live",
                               ffmpeg_options="rtsp_transport;tcp"), factory)
    open_capture(CameraOptions(name="plain", uri="rtsp://127.0.0.1:8554/live"), factory)
    assert factory.seen == ["rtsp_transport;tcp", None]
    assert ENV not in os.environ
    monkeypatch.setenv(ENV, "rtsp_transport;udp")
    open_capture(CameraOptions(name="ipcam", uri="rtsp://127.0.0.1:8554/live",
                               ffmpeg_options="rtsp_transport;tcp|stimeout;5000000"), factory)
    assert factory.seen[-1] == "rtsp_transport;tcp|stimeout;5000000"
    assert os.environ[ENV] == "rtsp_transport;udp"


def test_config_checks_the_option_syntax() -> None:
    ok = parse_config(with_change("sources.0.ffmpeg_options", "rtsp_transport;tcp|stimeout;5"))
    assert ok.sources[0].ffmpeg_options == "rtsp_transport;tcp|stimeout;5"
    with pytest.raises(ConfigError, match=r"sources\.0\.ffmpeg_options: 'rtsp_transport=tcp'"):
        parse_config(with_change("sources.0.ffmpeg_options", "rtsp_transport=tcp"))
    assert GOOD["sources"][0].get("ffmpeg_options") is None
