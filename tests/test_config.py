"""Config: strict keys, types, ranges, cross-field checks, each with its own message."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_config, parse_config, semantic_problems
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
GOOD: dict[str, Any] = {
    "device": {"id": "cam-01", "groups": ["lobby"]},
    "mqtt": {"host": "127.0.0.1", "port": 1883},
    "model": {"manifest": str(REPO / "agent/data/digits_cnn.json")},
    "sources": [{"name": "front", "type": "camera", "uri": "/tmp/x.avi"}],
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(GOOD)
    node = raw
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    last = parts[-1]
    if value is _DELETE:
        del node[last]
    elif last.isdigit() and int(last) == len(node):
        node.append(value)
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return raw


_DELETE = object()

BAD_CONFIGS = [
    ("mqtt.port", 70000, "mqtt.port: 70000: Input should be less than or equal to 65535"),
    ("mqtt.qos", 3, "mqtt.qos: 3: Input should be 0, 1 or 2"),
    ("mqtt.keepalive_s", "soon", "mqtt.keepalive_s: 'soon': Input should be a valid integer"),
    ("mqtt.pasword_env", "X", "mqtt.pasword_env: 'X': unknown key"),
    ("mqtt.password", "hunter2", "mqtt.password: (hidden): unknown key"),  # never printed
    ("model.num_threads", 0, "model.num_threads: 0: Input should be greater than or equal to 1"),
    ("model.manifest", _DELETE, "model.manifest: (missing): Field required"),
    ("model.delegate", {"kind": "external"},
     "model.delegate: {'kind': 'external'}: kind external needs library"),
    ("sources", [], "sources: []: List should have at least 1 item"),
    ("sources.0.type", "webcam", "sources.0: {'name': 'front', 'type': 'webcam'"),
    ("sources.0.uri", -1, "sources.0.uri: -1: a device index must be >= 0"),
    ("sources.0.name", "front door", "sources.0.name: 'front door': String should match"),
    ("sources.0.target_fps", 0, "sources.0.target_fps: 0: Input should be greater than 0"),
    ("sources.1", {"name": "front", "type": "camera", "uri": 0},
     "sources: [{'name': 'front'"),
    ("device.id", "a/b", "device.id: 'a/b': String should match pattern"),
    ("publish.min_score", 1.5, "publish.min_score: 1.5: Input should be less than or equal to 1"),
    ("mqtt.tls", {"enabled": True, "cert_file": "c.pem"},
     "mqtt.tls: {'enabled': True, 'cert_file': 'c.pem'}: cert_file and key_file must be given "
     "together"),
    ("mqtt.reconnect_max_s", 0.1, "reconnect_max_s must be >= reconnect_min_s"),
    ("log_level", "LOUD", "log_level: 'LOUD': Input should be 'DEBUG'"),
]


@pytest.mark.parametrize(("path", "value", "expected"), BAD_CONFIGS,
                         ids=[b[0] for b in BAD_CONFIGS])
def test_each_bad_config_gets_its_own_message(path: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(with_change(path, value))
    assert any(expected in line for line in info.value.problems), info.value.problems


def test_good_config_and_defaults() -> None:
    cfg = parse_config(GOOD)
    assert cfg.mqtt.qos == 1 and cfg.outbox.enabled and cfg.device.prefix == "edge"
    assert cfg.sources[0].type == "camera"


def test_every_problem_is_reported_at_once() -> None:
    raw = with_change("mqtt.port", 0)
    raw["model"]["num_threads"] = -1
    raw["bogus"] = 1
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    keys = {line.split(":")[0] for line in info.value.problems}
    assert {"mqtt.port", "model.num_threads", "bogus"} <= keys


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config(["a"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    raw = copy.deepcopy(GOOD)
    raw["model"]["manifest"] = "models/m.json"
    raw["sources"][0]["uri"] = "videos/a.avi"
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert cfg.model.manifest == tmp_path / "models/m.json"
    assert cfg.sources[0].uri == str(tmp_path / "videos/a.avi")


def test_secrets_come_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config(with_change("mqtt.password_env", "EDGE_TEST_PW"))
    monkeypatch.delenv("EDGE_TEST_PW", raising=False)
    with pytest.raises(ConfigError, match="EDGE_TEST_PW: environment variable is not set"):
        cfg.mqtt.password()
    monkeypatch.setenv("EDGE_TEST_PW", "s3cret")
    assert cfg.mqtt.password() == "s3cret"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    assert parse_config(with_change("mqtt.password_file", str(secret))).mqtt.password() \
        == "from-file"


def test_semantic_checks_name_the_model_mismatch(tmp_path: Path) -> None:
    raw = with_change("sources.0", {"name": "imu", "type": "mqtt"})
    problems = semantic_problems(parse_config(raw))
    assert problems == ["sources.0.type: 'mqtt': the model is a frame model and needs "
                        "camera sources"]
    missing = semantic_problems(parse_config(with_change("model.manifest",
                                                         str(tmp_path / "nope.json"))))
    assert "manifest not found" in missing[0]


def test_check_config_cli_prints_key_value_reason(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(with_change("mqtt.port", "x")))
    out = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "mqtt.port: 'x': Input should be a valid integer" in out.stdout
    good = tmp_path / "good.yaml"
    video = tmp_path / "x.avi"
    video.write_bytes(b"a readable file")  # check-config looks for the video file
    good.write_text(yaml.safe_dump({**GOOD, "state_dir": str(tmp_path / "state"),
                                    "sources": [{**GOOD["sources"][0], "uri": str(video)}]}))
    ok = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(good)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_example_configs_are_valid() -> None:
    for path in (REPO / "config" / "agent.example.yaml", REPO / "agent" / "data" / "demo.yaml"):
        cfg = load_config(path)
        assert cfg.sources


def alias_bomb(levels: int, name: str = "sources") -> str:
    """A "billion laughs" document: each level nine aliases of the one before."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    lines.append(f"{name}: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(9))
    assert bomb.stat().st_size < 1024
    out = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(bomb)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "expands to more than 100000 values through aliases" in out.stdout
    loop = tmp_path / "loop.yaml"
    loop.write_text("sources: &s [*s]\n")
    with pytest.raises(ConfigError, match=r"refers to itself|expands"):
        load_config(loop)


@pytest.mark.slow
def test_run_refuses_a_bomb_and_a_non_utf8_file_without_a_traceback(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(9))
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b'device: {id: "caf\xe9"}\n')
    for command, path in (("run", bomb), ("run", latin1), ("check-config", latin1)):
        args = [command, "--config", str(path)] if command == "run" else [command, str(path)]
        done = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert str(path) in done.stdout + done.stderr


def test_a_file_that_is_not_utf8_is_named_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b'device: {id: "caf\xe9"}\n')
    with pytest.raises(ConfigError, match=r"latin1.yaml'.*not UTF-8 \(invalid continuation"):
        load_config(path)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000)
    with pytest.raises(ConfigError, match=r"deep\.yaml"):
        load_config(deep)


def test_the_documented_every_stream_wildcard_is_accepted() -> None:
    raw = with_change("sources.0", {"name": "imu", "type": "mqtt", "streams": ["+"]})
    assert parse_config(raw).sources[0].streams == ["+"]  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"streams\.0"):
        parse_config(with_change("sources.0", {"name": "imu", "type": "mqtt",
                                               "streams": ["a+b"]}))


def test_drain_rate_and_rates_refuse_infinity() -> None:
    with pytest.raises(ConfigError, match="stats_interval_s"):
        parse_config(with_change("publish.stats_interval_s", float("inf")))
    with pytest.raises(ConfigError, match="drain_rate_per_s"):
        parse_config(with_change("outbox.drain_rate_per_s", float("nan")))
    assert parse_config(with_change("outbox.drain_rate_per_s", 0)).outbox.drain_rate_per_s == 0
