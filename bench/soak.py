"""Soak: run the agent for many frames and watch its memory and file descriptors.

    python -m bench.soak --frames 50000 [--fps 0] [--model agent/data/digits_cnn.json]
                         [--interval 5] [--warmup 0.1] [--out bench/results/soak.txt]

Starts a real Mosquitto and ``edge-agent run`` on a looping 640x480 MJPG file (full speed,
or ``--fps`` via the source's ``target_fps``), outbox on, QoS 1, and samples the child's
``/proc/<pid>/status`` VmRSS and ``/proc/<pid>/fd`` every ``--interval`` seconds, with the
frames inferred so far (from the agent's stats). Prints each sample, then the growth after
warm-up (the first ``--warmup`` fraction of the frames). Targets: < 5 MB growth over
50,000 frames, fds flat.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np

from bench.agentrun import AgentProcess, AgentSetup, Subscriber
from bench.common import DATA, broker, machine, make_video, proc_fds, proc_rss_mb


class Writer(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


@dataclass(frozen=True)
class Sample:
    t: float
    frames: int
    rss_mb: float
    fds: int
    outbox_depth: int


def _frames(sub: Subscriber) -> tuple[int, int]:
    if not sub.stats:
        return 0, 0
    last = sub.stats[-1]
    return int(last["inferences"]), int(last.get("outbox_depth") or 0)


def soak(frames: int, manifest: Path, fps: float | None, interval: float, out: Writer,
         timeout_s: float) -> list[Sample]:
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp, broker() as mq:
        video = make_video(Path(tmp) / "scene.avi")
        setup = AgentSetup(manifest, video, target_fps=fps or None, stats_interval_s=1.0)
        sub = Subscriber(mq.port)
        agent = AgentProcess(setup.config(Path(tmp) / "agent", mq.port))
        t0 = time.monotonic()
        try:
            print(f"{'t s':>7} {'frames':>9} {'VmRSS MB':>9} {'fds':>5} {'outbox':>7}",
                  file=out, flush=True)
            while time.monotonic() - t0 < timeout_s:
                if not agent.alive():
                    raise RuntimeError(f"agent exited:\n{agent.log_tail()}")
                done, depth = _frames(sub)
                s = Sample(time.monotonic() - t0, done, proc_rss_mb(agent.pid),
                           proc_fds(agent.pid), depth)
                samples.append(s)
                print(f"{s.t:7.1f} {s.frames:9d} {s.rss_mb:9.1f} {s.fds:5d} {s.outbox_depth:7d}",
                      file=out, flush=True)
                if done >= frames:
                    break
                time.sleep(interval)
        finally:
            agent.stop()
            sub.close()
    return samples


def verdict(samples: list[Sample], frames: int, warmup: float) -> str:
    after = [s for s in samples if s.frames >= warmup * frames]
    if len(after) < 2:
        return "too few samples after warm-up"
    first, last = after[0], after[-1]
    growth = last.rss_mb - first.rss_mb
    x = np.array([s.frames for s in after], np.float64)
    y = np.array([s.rss_mb for s in after], np.float64)
    slope = float(np.polyfit(x, y, 1)[0]) * 10_000 if np.ptp(x) > 0 else 0.0
    fds = [s.fds for s in after]
    seconds = last.t - first.t
    rate = (last.frames - first.frames) / seconds if seconds > 0 else float("nan")
    return (f"after warm-up ({first.frames} frames): {last.frames - first.frames} frames in "
            f"{seconds:.0f} s ({rate:.0f} fps); VmRSS {first.rss_mb:.1f} -> {last.rss_mb:.1f} MB "
            f"(growth {growth:+.2f} MB, max {max(y):.1f}, fitted slope {slope:+.3f} MB per "
            f"10k frames; target < 5 MB: {'met' if growth < 5 else 'MISSED'}); open fds "
            f"{min(fds)}..{max(fds)} ({'flat' if max(fds) == min(fds) else 'NOT flat'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--model", type=Path, default=DATA / "digits_cnn.json")
    parser.add_argument("--fps", type=float, default=0.0, help="0: full speed")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the frames")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, help="also write the output here")
    args = parser.parse_args(argv)
    sink = open(args.out, "w") if args.out else None  # noqa: SIM115 - closed below
    out = _Tee(sys.stdout, sink)
    try:
        m = machine()
        print(f"soak: {args.frames} frames of 640x480 MJPG, model {args.model.name}, "
              f"{'full speed' if not args.fps else f'{args.fps} fps'}, outbox on, QoS 1; "
              f"{m['cpu']}, {m['cores']} cores, Python {m['python']}", file=out, flush=True)
        samples = soak(args.frames, args.model, args.fps or None, args.interval, out,
                       args.timeout)
        print(verdict(samples, args.frames, args.warmup), file=out, flush=True)
    finally:
        if sink:
            sink.close()
    return 0


class _Tee:
    def __init__(self, *streams: TextIO | None) -> None:
        self.streams = [s for s in streams if s is not None]

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


if __name__ == "__main__":
    sys.exit(main())
