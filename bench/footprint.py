"""Start-up and memory: the agent as a process vs TensorFlow running the same model.

Start-up is the time from ``Popen`` to the first label at a subscriber (agent) or to the
first prediction printed (TensorFlow process); resident memory (VmRSS) is the largest of a
few samples taken after a warm-up, while both label a 30 fps video.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.agentrun import AgentProcess, AgentSetup, Subscriber
from bench.common import REPO, median, proc_rss_mb


def _rss_after(pid: int, warmup_s: float, samples: int = 5) -> float:
    time.sleep(warmup_s)
    values = []
    for _ in range(samples):
        values.append(proc_rss_mb(pid))
        time.sleep(0.2)
    return max(values)


def agent_once(port: int, manifest: Path, video: Path, workdir: Path,
               warmup_s: float) -> dict[str, float]:
    cfg = AgentSetup(manifest, video, realtime=True).config(workdir, port)
    sub = Subscriber(port)
    agent = AgentProcess(cfg)
    try:
        if not sub.wait_labels(1, 60):
            raise RuntimeError(f"no label from the agent:\n{agent.log_tail()}")
        assert sub.first_label_at is not None
        startup = sub.first_label_at - agent.started_at
        rss = _rss_after(agent.pid, warmup_s)
    finally:
        agent.stop()
        sub.close()
    return {"startup_s": startup, "rss_mb": rss}


def tf_once(keras_path: Path, manifest: Path, video: Path, warmup_s: float) -> dict[str, float]:
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "bench.tf_process", str(keras_path),
                             str(manifest), str(video), "--seconds", str(warmup_s + 5)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("first"):
            raise RuntimeError(f"TensorFlow process failed: {line!r}")
        startup = float(line.split()[1]) - started
        rss = _rss_after(proc.pid, warmup_s)
    finally:
        proc.kill()
        proc.wait()
    return {"startup_s": startup, "rss_mb": rss}


def compare(port: int, keras_path: Path, manifest: Path, video: Path, workdir: Path,
            rounds: int, warmup_s: float) -> dict[str, Any]:
    """Interleaved rounds of agent and TensorFlow process; medians and ratios."""
    runs: dict[str, list[dict[str, float]]] = {"agent": [], "tensorflow": []}
    for i in range(rounds):
        runs["agent"].append(agent_once(port, manifest, video, workdir / f"a{i}", warmup_s))
        runs["tensorflow"].append(tf_once(keras_path, manifest, video, warmup_s))
    med = {who: {k: median([r[k] for r in rs]) for k in ("startup_s", "rss_mb")}
           for who, rs in runs.items()}
    return {"median": med, "runs": runs,
            "rss_ratio": med["tensorflow"]["rss_mb"] / med["agent"]["rss_mb"],
            "startup_ratio": med["tensorflow"]["startup_s"] / med["agent"]["startup_s"]}
