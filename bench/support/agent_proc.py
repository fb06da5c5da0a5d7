"""Run ``edge-agent run`` as a real child process with a config written by the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "agent" / "data"


def agent_config(tmp: Path, port: int, sources: list[dict[str, Any]], *,
                 manifest: str = "digits_cnn.json", device: str = "dev1",
                 **sections: Any) -> Path:
    raw: dict[str, Any] = {
        "device": {"id": device, "prefix": "edge"},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 5,
                 "reconnect_min_s": 0.1, "reconnect_max_s": 1.0},
        "model": {"manifest": str(DATA / manifest), "num_threads": 1},
        "sources": sources,
        "publish": {"stats_interval_s": 1},
        "state_dir": str(tmp / f"state-{device}"),
        "log_level": "INFO",
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value) if isinstance(value, dict) else \
            raw.__setitem__(key, value)
    path = tmp / f"agent-{device}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class AgentProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = config.with_suffix(".log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **(env or {})})

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def terminate_timed(self) -> tuple[int, float]:
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        code = self.wait(10)
        return code, time.monotonic() - t0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.wait(5)
        if not self._log.closed:
            self._log.close()
