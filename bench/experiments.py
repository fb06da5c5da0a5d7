"""Measure changes to files this benchmark does not own, before anyone edits them.

    python -m bench.experiments [--rounds 3] [--seconds 8] [--model agent/data/digits_cnn.json]

Each variant runs the real ``edge-agent run`` child (full speed, outbox on, QoS 1, real
Mosquitto) with a *prelude*: Python executed in the child before ``agent.cli.main`` that
applies the proposed change by monkeypatching (a prototype of the change, not the change).
Variants are interleaved round by round; fps_out medians and the gain over the baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.agentrun import AgentSetup
from bench.common import DATA, broker, make_video, median
from bench.e2e import agent_fps
from bench.hotpath import BASELINE
from bench.stages import decode_fps

CV2_ONE_THREAD = "import cv2\ncv2.setNumThreads(1)\n"

GRAY_MJPEG = '''
import cv2
import numpy as np
import agent.capture.camera as _capture
import agent.capture.sources as _sources


class _GrayMjpeg:
    """Read the MJPEG packet undecoded (CAP_PROP_FORMAT -1) and decode only the luma."""

    def __init__(self, cap):
        self._cap = cap
        self.raw = bool(cap.set(cv2.CAP_PROP_FORMAT, -1))

    def read(self):
        ok, data = self._cap.read()
        if not ok or data is None:
            return False, None
        if not self.raw:
            return True, cv2.cvtColor(data, cv2.COLOR_BGR2GRAY)
        img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
        return img is not None, img

    def __getattr__(self, name):
        return getattr(self._cap, name)


_open = _sources.default_capture_factory
_sources.default_capture_factory = lambda t, a, p: _GrayMjpeg(_open(t, a, p))
_problem = _capture._frame_problem


def _gray_ok(img, p):
    if img is not None and img.ndim == 2 and img.dtype == np.uint8 and img.size:
        p.shape = img.shape
        return None
    return _problem(img, p)


_capture._frame_problem = _gray_ok
'''

PUBLISH_THREAD = '''
import logging
import queue
import threading

import agent.app as _app

_publish = _app.AgentApp._publish_result
_results = queue.SimpleQueue()


def _publisher():
    while True:
        app, result = _results.get()
        try:
            _publish(app, result)
        except Exception:
            logging.getLogger("bench").exception("publish failed")


threading.Thread(target=_publisher, name="publisher", daemon=True).start()
_app.AgentApp._publish_result = lambda self, result: _results.put((self, result))
'''

FILE_BACKPRESSURE = '''
import time

import agent.capture.camera as _capture

_due = _capture.CameraSource._due


def _due_when_taken(self):
    """Files at full speed: decode the next frame only once the last one was taken."""
    pending = getattr(self._slot, "_queues", {}).get(self.name)
    while pending and not self._stop.is_set():
        time.sleep(0.0001)
    return _due(self)


_capture.CameraSource._due = _due_when_taken
'''

TIMED_CALLS = '''
import atexit
import json
import os
import time

import agent.mqtt.port as _mqtt
import agent.inference.pipeline as _pipeline

_times = {"publish_durable": [], "process": []}


def _timed(owner, name, key):
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            _times[key].append(time.perf_counter() - t0)

    setattr(owner, name, wrapper)


_timed(_mqtt.MqttPort, "publish_durable", "publish_durable")
_timed(_pipeline.Pipeline, "_process", "process")


@atexit.register
def _dump():
    with open(os.environ["BENCH_TIMINGS"], "w") as f:
        json.dump(_times, f)
'''

BASELINE_STAGES = f'''
import subprocess
import sys
import types

import agent

for _name in ("preprocess", "postprocess", "payloads"):
    _src = subprocess.run(["git", "show", "{BASELINE}:agent/" + _name + ".py"], check=True,
                          capture_output=True, text=True).stdout
    _mod = types.ModuleType("agent." + _name)
    _mod.__file__ = "<baseline agent/" + _name + ".py>"
    sys.modules["agent." + _name] = _mod
    setattr(agent, _name, _mod)
    exec(compile(_src, _mod.__file__, "exec"), _mod.__dict__)
'''

VARIANTS: dict[str, str | None] = {
    "baseline (working tree)": None,
    "before the hot-path changes (stage files at the baseline commit)": BASELINE_STAGES,
    "cv2.setNumThreads(1)": CV2_ONE_THREAD,
    "gray models: decode MJPEG luma only": GRAY_MJPEG,
    "publish (payload, outbox put) on its own thread": PUBLISH_THREAD,
    "all three": CV2_ONE_THREAD + GRAY_MJPEG + PUBLISH_THREAD,
    "files at full speed: decode only when the slot is empty": FILE_BACKPRESSURE,
}


def gray_decode_fps(video: Path, seconds: float) -> float:
    """The decode stage alone when only the luma is decoded (imdecode IMREAD_GRAYSCALE)."""
    import time

    import cv2

    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_FORMAT, -1)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ok, data = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
        n += 1
    cap.release()
    return n / (time.perf_counter() - t0)


def run(manifest: Path, rounds: int, seconds: float,
        variants: dict[str, str | None] = VARIANTS) -> dict[str, Any]:
    fps: dict[str, list[float]] = {name: [] for name in variants}
    load: dict[str, list[float]] = {name: [] for name in variants}
    decode: dict[str, list[float]] = {"full BGR decode": [], "luma only": []}
    with tempfile.TemporaryDirectory(prefix="bench-exp-") as tmp, broker() as mq:
        video = make_video(Path(tmp) / "scene.avi")
        for r in range(rounds):
            decode["full BGR decode"].append(decode_fps(video, seconds / 4))
            decode["luma only"].append(gray_decode_fps(video, seconds / 4))
            for i, (name, prelude) in enumerate(variants.items()):
                setup = AgentSetup(manifest, video)
                res = agent_fps(mq.port, setup, Path(tmp) / f"r{r}v{i}", int(seconds), prelude,
                                mq.proc.pid)
                load[name].append(res["agent_foreign_cores"])
                fps[name].append(res["fps_out"])
    base = median(next(iter(fps.values())))
    return {"fps_out": {k: median(v) for k, v in fps.items()}, "runs": fps,
            "gain": {k: median(v) / base for k, v in fps.items()},
            "foreign_cores": {k: median(v) for k, v in load.items()},
            "decode_alone": {k: median(v) for k, v in decode.items()}}


def publish_share(manifest: Path, seconds: float) -> dict[str, float]:
    """How long ``publish_durable`` (outbox put + waking the sender) takes on the inference
    thread, against the whole per-frame ``Pipeline._process``, at full speed."""
    import json

    import numpy as np

    from bench.agentrun import AgentProcess, Subscriber

    with tempfile.TemporaryDirectory(prefix="bench-pub-share-") as tmp, broker() as mq:
        video = make_video(Path(tmp) / "scene.avi")
        out = Path(tmp) / "timings.json"
        sub = Subscriber(mq.port)
        agent = AgentProcess(AgentSetup(manifest, video).config(Path(tmp) / "a", mq.port),
                             extra_env={"BENCH_TIMINGS": str(out)}, prelude=TIMED_CALLS)
        try:
            sub.wait_stats(int(seconds) + 2, 60 + 2 * seconds)
        finally:
            agent.stop()
            sub.close()
        times = json.loads(out.read_text())
    pub = np.asarray(times["publish_durable"][200:]) * 1e6
    proc = np.asarray(times["process"][200:]) * 1e6
    return {"calls": float(len(pub)), "publish_p50_us": float(np.percentile(pub, 50)),
            "publish_p99_us": float(np.percentile(pub, 99)), "publish_max_us": float(pub.max()),
            "process_p50_us": float(np.percentile(proc, 50)),
            "process_p99_us": float(np.percentile(proc, 99)),
            "publish_share": float(pub.sum() / proc.sum())}


def markdown(res: dict[str, Any]) -> str:
    lines = ["| variant | agent fps_out (median) | runs | vs baseline | other sessions' "
             "load, cores |", "|---|---|---|---|---|"]
    for name, value in res["fps_out"].items():
        runs = ", ".join(f"{v:.0f}" for v in res["runs"][name])
        lines.append(f"| {name} | {value:.0f} | {runs} | {res['gain'][name]:.2f}x | "
                     f"{res['foreign_cores'][name]:.2f} |")
    dec = ", ".join(f"{k} {v:.0f}/s" for k, v in res["decode_alone"].items())
    return "\n".join(lines) + f"\n\nDecode stage alone in the same run: {dec}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--model", type=Path, default=DATA / "digits_cnn.json")
    parser.add_argument("--variants", nargs="+", metavar="N", type=int,
                        help="indexes into the variant list (0 = baseline, always run)")
    parser.add_argument("--publish-share", action="store_true",
                        help="time publish_durable against the whole per-frame work instead")
    args = parser.parse_args(argv)
    if args.publish_share:
        share = publish_share(args.model, args.seconds)
        print(", ".join(f"{k} {v:.1f}" if k != "publish_share" else f"{k} {v:.1%}"
                        for k, v in share.items()))
        return 0
    names = list(VARIANTS)
    chosen = sorted({0, *(args.variants or range(len(names)))})
    variants = {names[i]: VARIANTS[names[i]] for i in chosen}
    print(markdown(run(args.model, args.rounds, args.seconds, variants)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
