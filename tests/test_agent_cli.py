"""``edge-agent`` as a user meets it: --help of every subcommand, and check-config."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import build_parser, check_config
from bench.support.agent_proc import DATA


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_has_a_description_and_its_default() -> None:
    parser = build_parser()
    subs = _subparsers(parser)
    assert set(subs) == {"run", "check-config", "demo"}
    for name, sub in [("edge-agent", parser), *subs.items()]:
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.dest}: no description"
            has_default = action.default not in (None, argparse.SUPPRESS)
            if has_default and action.option_strings and action.dest != "version":
                assert f"(default: {action.default})" in " ".join(text.split()), \
                    f"{name} {action.dest}: default not shown"
            if action.required and action.option_strings:
                assert "(required)" in text, f"{name} {action.dest}"
        assert sub.description or name == "edge-agent", name
    for name, sub in subs.items():
        assert name in parser.format_help() and sub.description


def test_help_runs_as_a_command() -> None:
    for args in ([], ["run"], ["check-config"], ["demo"]):
        out = subprocess.run([sys.executable, "-m", "agent.cli", *args, "--help"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "usage: edge-agent" in out.stdout, out.stderr


# --------------------------------------------------------------------------- check-config

def _config(tmp_path: Path, **changes: Any) -> Path:
    video = tmp_path / "clip.avi"
    video.write_bytes(b"not really a video, but a readable file")
    raw: dict[str, Any] = {
        "device": {"id": "dev1"},
        "model": {"manifest": str(DATA / "digits_cnn.json")},
        "sources": [{"name": "cam", "type": "camera", "uri": str(video)}],
        "state_dir": str(tmp_path / "state"),
    }
    for key, value in changes.items():
        section, _, leaf = key.partition(".")
        if leaf:
            raw.setdefault(section, {})[leaf] = value
        else:
            raw[section] = value
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = check_config(path)
    return code, capsys.readouterr().out


def test_check_config_accepts_a_good_config(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out = _check(_config(tmp_path), capsys)
    assert code == 0 and "OK" in out, out
    assert not (tmp_path / "state").exists()  # checking creates nothing


def test_check_config_state_dir_that_cannot_be_created(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "afile").write_text("x")
    code, out = _check(_config(tmp_path, state_dir=str(tmp_path / "afile" / "state")), capsys)
    assert code == 2 and "state_dir:" in out and "is not a folder" in out, out


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr!r}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_check_config_state_dir_on_a_read_only_disk(tmp_path: Path, read_only_dir: Path,
                                                    capsys) -> None:  # type: ignore[no-untyped-def]
    code, out = _check(_config(tmp_path, state_dir=str(read_only_dir)), capsys)
    assert code == 2 and "cannot be written: Read-only file system" in out, out
    code, out = _check(_config(tmp_path, state_dir=str(read_only_dir / "sub")), capsys)
    assert code == 2 and "cannot be created in" in out, out


def test_check_config_missing_video_and_keys(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    path = _config(tmp_path, sources=[{"name": "cam", "type": "camera",
                                       "uri": str(tmp_path / "gone.avi")}],
                   **{"delivery.trusted_keys": [str(tmp_path / "missing.pub"), str(bad_key)]})
    code, out = _check(path, capsys)
    assert code == 2
    assert f"sources.0.uri: '{tmp_path / 'gone.avi'}': video file not found" in out, out
    assert "delivery.trusted_keys.0:" in out and "neither an existing key file" in out
    assert "delivery.trusted_keys.1:" in out and "not a PEM public key" in out


def test_check_config_model_file_that_does_not_match_its_manifest(tmp_path: Path,
                                                                  capsys) -> None:  # type: ignore[no-untyped-def]
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(DATA / "digits_cnn.json", models)
    tflite = models / "digits_cnn.tflite"
    data = bytearray((DATA / "digits_cnn.tflite").read_bytes())
    data[-1] ^= 0xFF
    tflite.write_bytes(bytes(data))
    path = _config(tmp_path, **{"model.manifest": str(models / "digits_cnn.json")})
    code, out = _check(path, capsys)
    assert code == 2 and "model.manifest:" in out and "has sha256" in out, out
    tflite.unlink()
    code, out = _check(path, capsys)
    assert code == 2 and "is missing" in out, out


def test_check_config_never_prints_a_password(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = _config(tmp_path, **{"mqtt.password": "hunter2", "mqtt.token": "abc123xyz"})
    code, out = _check(path, capsys)
    assert code == 2 and "mqtt.password: (hidden): unknown key" in out, out
    assert "hunter2" not in out and "abc123xyz" not in out


def test_check_config_unquoted_protocol_reads_like_what_was_typed(tmp_path: Path,
                                                                   capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.yaml"
    path.write_text(_config(tmp_path).read_text() + "mqtt:\n  protocol: 5\n")
    code, out = _check(path, capsys)
    assert code == 2
    assert 'mqtt.protocol: 5: a number here; write it as a string: protocol: "5"' in out, out


def test_run_on_a_read_only_state_dir_says_why_without_a_traceback(
        tmp_path: Path, read_only_dir: Path) -> None:
    path = _config(tmp_path, state_dir=str(read_only_dir / "state"),
                   **{"mqtt.port": 1, "device.id": "ro1"})
    out = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "cannot start: [Errno 30] Read-only file system" in out.stderr
    assert "Traceback" not in out.stderr and "check-config" in out.stderr
