"""Profile the agent's hot path with py-spy while it runs a video at full speed.

    python -m bench.profile [--seconds 10] [--model agent/data/digits_cnn.json] [--native]

Starts a real Mosquitto and ``edge-agent run`` (file source, realtime false, loop, outbox
on), lets it warm up, samples it with ``py-spy record --format raw`` and prints, per
thread, where the on-CPU samples are (self and inclusive), plus the agent's fps_out.
Needs ``pip install py-spy``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.agentrun import AgentProcess, AgentSetup, Subscriber, fps_window
from bench.common import DATA, broker, make_video
from bench.experiments import VARIANTS


@dataclass
class ThreadProfile:
    samples: int = 0
    self_: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)


def parse_raw(text: str) -> dict[str, ThreadProfile]:
    """py-spy's collapsed stacks (``thread;frame;frame count``) per thread name."""
    threads: dict[str, ThreadProfile] = defaultdict(ThreadProfile)
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        name = frames[0].split(": ", 1)[-1]
        prof = threads[name]
        n = int(count)
        prof.samples += n
        calls = [_short(f) for f in frames[1:]]
        if calls:
            prof.self_[calls[-1]] += n
        for call in set(calls):
            prof.inclusive[call] += n
    return dict(threads)


def _short(frame: str) -> str:
    """``Outbox.put (agent/mqtt/outbox.py:112)`` -> ``Outbox.put (agent/mqtt/outbox.py)``."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{name} ({file})" if file else name


def summary(threads: dict[str, ThreadProfile], top: int = 12,
            possible: int | None = None) -> str:
    total = sum(p.samples for p in threads.values()) or 1
    lines = [f"{total} samples" + (f" of {possible} sampling instants "
                                   f"({100.0 * total / possible:.0f}%)" if possible else "")]
    for name, prof in sorted(threads.items(), key=lambda kv: -kv[1].samples):
        if prof.samples < total * 0.01:
            continue
        lines.append(f"\n== thread {name}: {prof.samples} samples "
                     f"({100.0 * prof.samples / total:.1f}% of all)")
        lines.append("  self:")
        for call, n in prof.self_.most_common(top):
            lines.append(f"    {100.0 * n / prof.samples:5.1f}%  {call}")
        lines.append("  inclusive (agent code):")
        agent = [(c, n) for c, n in prof.inclusive.most_common() if "agent/" in c]
        for call, n in agent[:top]:
            lines.append(f"    {100.0 * n / prof.samples:5.1f}%  {call}")
    return "\n".join(lines)


def profile_agent(manifest: Path, seconds: float, native: bool, rate: int = 200,
                  warmup_stats: int = 3, prelude: str | None = None, gil: bool = False
                  ) -> tuple[str, dict[str, float]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp, broker() as mq:
        video = make_video(Path(tmp) / "scene.avi")
        cfg = AgentSetup(manifest, video).config(Path(tmp) / "agent", mq.port)
        sub = Subscriber(mq.port)
        agent = AgentProcess(cfg, prelude=prelude)
        try:
            if not sub.wait_stats(warmup_stats, 60):
                raise RuntimeError(f"agent published no stats:\n{agent.log_tail()}")
            out = Path(tmp) / "raw.txt"
            cmd = [spy, "record", "--pid", str(agent.pid), "--duration", str(int(seconds)),
                   "--rate", str(rate), "--format", "raw", "--threads", "--nonblocking",
                   "--output", str(out)] + (["--native"] if native else []) + (
                       ["--gil"] if gil else [])
            subprocess.run(cmd, check=True, capture_output=True)
            text = out.read_text()
        finally:
            agent.stop()
            sub.close()
    return (summary(parse_raw(text), possible=int(seconds * rate)),
            fps_window(sub.stats, skip=warmup_stats - 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", type=Path, default=DATA / "digits_cnn.json")
    parser.add_argument("--native", action="store_true", help="include C frames")
    parser.add_argument("--gil", action="store_true",
                        help="only samples holding the GIL (who holds it, and for what)")
    parser.add_argument("--variant", choices=list(VARIANTS), default=next(iter(VARIANTS)),
                        help="a prototyped change from bench.experiments")
    args = parser.parse_args(argv)
    text, fps = profile_agent(args.model, args.seconds, args.native,
                              prelude=VARIANTS[args.variant], gil=args.gil)
    print(text)
    print(f"\nagent while sampled: fps_out {fps['fps_out']:.0f}, fps_in {fps['fps_in']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
