"""Try a pushed model in a short-lived child process before the agent loads it.

A model file can crash the interpreter inside its load or first invoke (a flipped word in a
flatbuffer, a converter bug, a runtime mismatch), and a crash in-process takes the whole agent
down. The child (``python -m agent.models.trial``) runs the same ``ModelLoader`` with the same
settings and reports on its last stdout line; a signal, a timeout or garbage output is a
refusal naming it, and the running model keeps serving.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.errors import EdgeError, ModelLoadError
from agent.manifest import parse_manifest
from agent.models.loader import EngineSettings, ModelLoader

DEFAULT_TIMEOUT_S = 60.0
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def signal_name(number: int) -> str:
    try:
        return f"signal {number}, {signal.Signals(number).name}"
    except ValueError:
        return f"signal {number}"


def try_in_child(model_path: Path, manifest: dict[str, Any], settings: EngineSettings,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, float]:
    """Load, check and warm the model in a child; return its timings or raise ModelLoadError."""
    request = json.dumps({"model_path": str(model_path), "manifest": manifest,
                          "settings": settings.as_dict()})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT),
                                                    env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", "agent.models.trial"], input=request,
                              capture_output=True, text=True, timeout=timeout_s, env=env,
                              errors="replace")
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(f"the trial load did not finish within {timeout_s:g} s") from exc
    except OSError as exc:
        raise ModelLoadError(f"the trial process could not start: {exc}") from exc
    if proc.returncode < 0:
        raise ModelLoadError(f"the interpreter crashed ({signal_name(-proc.returncode)})")
    lines = proc.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        report = None
    if not isinstance(report, dict) or "ok" not in report:
        tail = (proc.stderr or proc.stdout).strip()[-300:]
        raise ModelLoadError(f"the trial process failed (exit {proc.returncode}): {tail}")
    if not report["ok"]:
        raise ModelLoadError(str(report.get("reason")))
    return {k: float(v) for k, v in report.get("timings", {}).items()}


def _trial(request: dict[str, Any]) -> dict[str, Any]:
    try:
        manifest = parse_manifest(request["manifest"], origin="pushed manifest")
        loader = ModelLoader(EngineSettings.from_dict(request["settings"]))
        warm = loader.load(Path(request["model_path"]), manifest)
    except EdgeError as exc:
        return {"ok": False, "reason": str(exc)}
    return {"ok": True, "timings": warm.timings()}


def main() -> int:
    report = _trial(json.loads(sys.stdin.read()))
    sys.stdout.write("\n" + json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
