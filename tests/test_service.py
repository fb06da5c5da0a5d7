"""deploy/edge-agent.service passes systemd-analyze verify and carries the settings we rely on."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "edge-agent.service"
EXEC = "/opt/edge-agent/venv/bin/edge-agent"


def unit_settings() -> dict[str, list[str]]:
    """Every key of [Service] with all its values (DeviceAllow repeats)."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    # verify checks that ExecStart exists; point it at a binary that does, in a copy.
    copy = tmp_path / "edge-agent.service"
    copy.write_text(UNIT.read_text().replace(EXEC, "/bin/true"))
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60)
    # Parse problems only warn (exit 0), so the proof is an empty stderr.
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is absent")
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    copy = tmp_path / "edge-agent.service"
    copy.write_text(UNIT.read_text().replace(EXEC, "/bin/true")
                    .replace("WatchdogSec=", "WatchdogSecs="))
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60)
    assert "Unknown key 'WatchdogSecs'" in proc.stderr


def test_unit_has_notify_watchdog_state_and_hardening() -> None:
    s = unit_settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "30" and one["Restart"] == "on-failure" and "RestartSec" in one
    assert one["ExecStart"] == f"{EXEC} run --config /etc/edge-agent/agent.yaml"
    assert one["User"] == "edge-agent" and one["SupplementaryGroups"] == "video"
    assert one["StateDirectory"] == "edge-agent"
    assert one["ConfigurationDirectory"] == "edge-agent"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
                "ProtectControlGroups"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert set(one["RestrictAddressFamilies"].split()) >= {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one["DevicePolicy"] == "closed"
    assert {"char-video4linux rw", "/dev/apex_0 rw", "char-usb_device rw"} <= set(
        s["DeviceAllow"])


def test_unit_is_parseable_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser["Install"]["WantedBy"] == "multi-user.target"
