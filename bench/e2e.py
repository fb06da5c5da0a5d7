"""Against the limit: the agent end to end at full speed vs its slowest stage alone.

One round = each stage alone in a tight loop (decode with ``cv2.VideoCapture``, preprocess,
invoke at the agent's thread count), then ``edge-agent run`` on the same 640x480 MJPG file
(realtime false, loop, outbox on, QoS 1 to a real Mosquitto). fps_out is inferences/s
from the agent's own counters (its ``stats`` messages), over a window after warm-up.

The two vCPUs of this machine are not independent (a busy process on one slows a loop on
the other by 25-40%), so decode is also measured while a busy process spins on the other
core: the agent cannot have the whole machine for decoding while it also infers.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.agentrun import AgentProcess, AgentSetup, Subscriber, fps_window
from bench.common import LoadMeter, median
from bench.stages import decode_fps, stage_rates


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def agent_fps(port: int, setup: AgentSetup, workdir: Path, windows: int,
              prelude: str | None = None, broker_pid: int | None = None) -> dict[str, float]:
    """fps_out over ``windows`` stats intervals after warm-up, and the load meanwhile."""
    sub = Subscriber(port)
    agent = AgentProcess(setup.config(workdir, port), prelude=prelude)
    try:
        if not sub.wait_stats(3, 60):
            raise RuntimeError(f"agent stats missing:\n{agent.log_tail()}")
        meter = LoadMeter([agent.pid] + ([broker_pid] if broker_pid else [])).start()
        if not sub.wait_stats(windows + 3, 30 + 2 * windows * setup.stats_interval_s):
            raise RuntimeError(f"agent stats missing:\n{agent.log_tail()}")
        load = meter.stop()
    finally:
        agent.stop()
        sub.close()
    return {**fps_window(sub.stats, skip=2), **{f"agent_{k}": v for k, v in load.items()}}


def one_round(port: int, manifest: Path, video: Path, threads: int, workdir: Path,
              seconds: float, prelude: str | None = None,
              broker_pid: int | None = None) -> dict[str, float]:
    meter = LoadMeter().start()
    stages = stage_rates(manifest, video, threads, seconds / 4)
    stages["decode"] = decode_fps(video, seconds / 2)
    load = meter.stop()
    with busy_core():
        stages["decode_other_core_busy"] = decode_fps(video, seconds / 2)
    setup = AgentSetup(manifest, video, num_threads=threads)
    run = agent_fps(port, setup, workdir, max(3, int(seconds)), prelude, broker_pid)
    run.update({f"stages_{k}": v for k, v in load.items()})
    limit_stage = min(("decode", "preprocess", "invoke"), key=lambda k: stages[k])
    limit = stages[limit_stage]
    contended = min(stages["decode_other_core_busy"], stages["preprocess"], stages["invoke"])
    serial = 1.0 / sum(1.0 / stages[k] for k in ("preprocess", "invoke", "postprocess",
                                                  "payload"))
    design = min(stages["decode"], serial)
    return {**{f"{k}_per_s": v for k, v in stages.items()}, **run,
            "limit_stage": limit_stage, "limit_per_s": limit,  # type: ignore[dict-item]
            "serial_per_s": serial, "ratio": run["fps_out"] / limit,
            "ratio_contended": run["fps_out"] / contended,
            "ratio_design": run["fps_out"] / design}


def against_limit(port: int, manifest: Path, video: Path, threads: int, workdir: Path,
                  rounds: int, seconds: float, prelude: str | None = None,
                  broker_pid: int | None = None) -> dict[str, Any]:
    runs = [one_round(port, manifest, video, threads, workdir / f"r{i}", seconds, prelude,
                      broker_pid) for i in range(rounds)]
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    med: dict[str, Any] = {k: median([r[k] for r in runs]) for k in keys}
    med["limit_stage"] = runs[0]["limit_stage"]
    return {"median": med, "runs": runs}
