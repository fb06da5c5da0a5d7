"""The agent as a user installs it: a real, non-editable ``pip install .`` into a fresh
virtualenv, run from another folder, so that nothing can come from the source tree."""

from __future__ import annotations

import os
import site
import subprocess
import venv
from pathlib import Path

import pytest

from agent.demo import DEFAULT_CONFIG

REPO = Path(__file__).resolve().parents[1]


def test_demo_config_is_package_data() -> None:
    import agent

    package = Path(agent.__file__).parent
    assert DEFAULT_CONFIG.is_file()
    assert DEFAULT_CONFIG.parent == package / "data"  # shipped by package-data "data/*"
    assert "data/*" in (REPO / "pyproject.toml").read_text()


@pytest.mark.slow
def test_demo_runs_after_a_non_editable_install(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True, env=env).stdout.strip()
    # third-party packages (and pip) from the test's own environment, never the project
    (Path(own) / "reuse.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(REPO)],
                             capture_output=True, text=True, timeout=300, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    where = subprocess.run([str(py), "-c", "import agent; print(agent.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True, env=env)
    assert where.stdout.startswith(own), where.stdout
    demo = subprocess.run([str(env_dir / "bin" / "edge-agent"), "demo", "--seconds", "3"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "labels in" in demo.stdout and "final status: stopped" in demo.stdout
