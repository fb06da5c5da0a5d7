"""Before/after of the hot-path changes, side by side in one process and one run.

The "before" modules are the agent's stage files as they were before the performance work
(``BASELINE`` commit), loaded from git under another name; "after" is the working tree.
Each pair runs on the same decoded 640x480 frames, rounds interleaved.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bench.common import REPO, decoded_frames, median

BASELINE = "be0edd483ee05a5c2d4bc8d513e89b33aaa27931"


def baseline_module(relpath: str, name: str, folder: Path) -> ModuleType:
    source = subprocess.run(["git", "show", f"{BASELINE}:{relpath}"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    # the manifest types moved from agent.contract to agent.manifest since
    source = source.replace("from agent.contract import InputSpec",
                            "from agent.manifest import InputSpec").replace(
        "from agent.contract import OutputSpec", "from agent.manifest import OutputSpec")
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _per_call_us(fn: Callable[[], Any], budget_s: float) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 10 or time.perf_counter() - t0 < budget_s:
        fn()
        n += 1
    return 1e6 * (time.perf_counter() - t0) / n


def _decode_pairs(video: Path, manifests: list[Path]
                  ) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """Decode + preprocess per frame: FFmpeg's full BGR decode (before) vs the agent's
    reduced JPEG decode for the model (after), the same preprocess code on both."""
    from agent.inference import preprocess
    from agent.manifest import load_manifest
    from bench.stages import _Reader

    pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {}
    for path in manifests:
        m = load_manifest(path)
        pre_b, pre_a = preprocess.FramePreprocessor(m.input), preprocess.FramePreprocessor(m.input)
        factor, gray = pre_a.decode_plan(640, 480)
        rb, ra = _Reader(video), _Reader(video, pre_a.decode_plan)
        shape = "x".join(str(d) for d in m.input.shape[1:])
        pairs[f"decode + preprocess, 640x480 MJPG -> {shape} (reduced 1/{factor}"
              f"{', luma' if gray else ''})"] = (lambda p=pre_b, r=rb: p(r()),
                                                 lambda p=pre_a, r=ra: p(r()))
    return pairs


def _pairs(old: dict[str, ModuleType], frames: list[np.ndarray], manifests: list[Path]
           ) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    from agent import payloads
    from agent.inference import postprocess, preprocess
    from agent.manifest import load_manifest
    from agent.records import LabelScore, Result

    pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {}
    for path in manifests:
        m = load_manifest(path)
        before = old["preprocess"].FramePreprocessor(m.input)
        after = preprocess.FramePreprocessor(m.input)
        c1, c2 = itertools.cycle(frames), itertools.cycle(frames)
        shape = "x".join(str(d) for d in m.input.shape[1:])
        pairs[f"preprocess 640x480 -> {shape} {m.input.color} {m.input.dtype}"] = (
            lambda b=before, c=c1: b(next(c)), lambda a=after, c=c2: a(next(c)))
        raw = np.zeros(m.output.shape, np.dtype(m.output.dtype))
        pb = old["postprocess"].Postprocessor(m.output, m.labels, top_k=3)
        pa = postprocess.Postprocessor(m.output, m.labels, top_k=3)
        pairs[f"postprocess {m.output.dtype} top-3 of {m.output.shape[-1]}"] = (
            lambda p=pb, r=raw: p(r), lambda p=pa, r=raw: p(r))
    labels = tuple(LabelScore(str(i), i, 0.1 * i) for i in range(3))
    result = Result(7, "cam", 3, time.time(), time.monotonic(), labels, 0.4, 0.1, "m", "1")
    now, mono = time.time(), time.monotonic()
    pairs["labels payload (JSON)"] = (
        lambda: old["payloads"].labels_payload(result, "r", now, mono),
        lambda: payloads.labels_payload(result, "r", now, mono))
    return pairs


def _difference(before: Any, after: Any) -> str:
    """How the two outputs differ: 'identical', or the largest difference."""
    if isinstance(before, np.ndarray):
        d = float(np.max(np.abs(before.astype(np.float64) - after.astype(np.float64))))
        return "identical" if d == 0 else f"max abs diff {d:g} (input units)"
    if isinstance(before, tuple):
        same = [x.score for x in before] == [x.score for x in after]
        return "identical" if before == after else ("same scores" if same else "DIFFERENT")
    return "identical" if before == after else "DIFFERENT"


def compare(video: Path, manifests: list[Path], rounds: int, budget_s: float
            ) -> list[dict[str, Any]]:
    frames = decoded_frames(video, 16)
    with tempfile.TemporaryDirectory(prefix="bench-base-") as tmp:
        old = {name: baseline_module(f"agent/{name}.py", f"baseline_{name}", Path(tmp))
               for name in ("preprocess", "postprocess", "payloads")}
        pairs = {**_pairs(old, frames, manifests), **_decode_pairs(video, manifests)}
        diffs = {k: _worst_difference(b, a, len(frames)) for k, (b, a) in pairs.items()}
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in pairs}
        for _ in range(rounds):
            for name, (before, after) in pairs.items():
                times[name].append((_per_call_us(before, budget_s),
                                    _per_call_us(after, budget_s)))
    rows = []
    for name, pairs_t in times.items():
        b, a = median([t[0] for t in pairs_t]), median([t[1] for t in pairs_t])
        rows.append({"stage": name, "before_us": b, "after_us": a, "speedup": b / a,
                     "output": diffs[name]})
    return rows


def _worst_difference(before: Callable[[], Any], after: Callable[[], Any], calls: int) -> str:
    worst = "identical"
    for _ in range(calls):
        b = before()
        b = b.copy() if isinstance(b, np.ndarray) else b
        d = _difference(b, after())
        if d != "identical":
            worst = d
    return worst


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.hotpath``: table (g) alone, printed as Markdown."""
    import argparse

    from bench.common import DATA, make_video
    from bench.report import hotpath_md

    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / "results" / "cache")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    video = make_video(args.cache / "scene_640x480.avi")
    manifests = [DATA / "digits_cnn.json", *sorted(args.cache.glob("mobilenet_v2_*/int8/*.json"))]
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(hotpath_md(compare(video, manifests, args.rounds, 0.3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
