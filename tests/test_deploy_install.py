"""deploy/install.sh into a DESTDIR: files, paths, no overwrite of an existing config."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "install.sh"


def run_install(destdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "DESTDIR": str(destdir), "EDGE_AGENT_SKIP_VENV": "1", **env}
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True,
                          env=full_env, timeout=60, check=False)


def test_install_into_destdir_writes_unit_config_and_models(tmp_path: Path) -> None:
    key = tmp_path / "deploy.pub"
    key.write_text("AAAA\n")
    dest = tmp_path / "root"
    proc = run_install(dest, EDGE_AGENT_TRUSTED_KEY=str(key))
    assert proc.returncode == 0, proc.stderr
    assert "no user created, nothing enabled" in proc.stdout
    unit = dest / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == (ROOT / "deploy/edge-agent.service").read_text()
    conf_path = dest / "etc/edge-agent/agent.yaml"
    assert stat.S_IMODE(conf_path.stat().st_mode) == 0o640
    conf = yaml.safe_load(conf_path.read_text())
    assert conf["model"]["manifest"] == "/opt/edge-agent/models/digits_cnn.json"
    assert conf["delivery"]["trusted_keys"] == ["/etc/edge-agent/trusted-keys/deploy.pub"]
    assert conf["state_dir"] == "/var/lib/edge-agent"
    assert (dest / "etc/edge-agent/trusted-keys/deploy.pub").read_text() == "AAAA\n"
    if (ROOT / "agent/data/digits_cnn.tflite").exists():
        assert (dest / "opt/edge-agent/models/digits_cnn.tflite").is_file()
        assert (dest / "opt/edge-agent/models/digits_cnn.json").is_file()
    assert not (dest / "opt/edge-agent/venv").exists()


def test_existing_config_is_kept(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    assert run_install(dest).returncode == 0
    conf = dest / "etc/edge-agent/agent.yaml"
    conf.write_text("# mine\n")
    proc = run_install(dest)
    assert proc.returncode == 0 and "keeping the existing" in proc.stdout
    assert conf.read_text() == "# mine\n"


def test_prefix_and_sysconfdir_are_applied_to_the_unit(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    proc = run_install(dest, PREFIX="/srv/agent", SYSCONFDIR="/etc/agent2")
    assert proc.returncode == 0, proc.stderr
    unit = (dest / "etc/systemd/system/edge-agent.service").read_text()
    assert "ExecStart=/srv/agent/venv/bin/edge-agent run --config /etc/agent2/agent.yaml" in unit
    assert (dest / "etc/agent2/agent.yaml").is_file()


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    proc = run_install(tmp_path / "root", "--bogus")
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr

