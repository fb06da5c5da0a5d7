"""JPEG decode alone, the ways the agent can decode a 640x480 MJPG frame, side by side:
``python -m bench.decode [--rounds 30]``.

FFmpeg's BGR decode (``VideoCapture.read``), OpenCV's full ``imdecode`` of the raw packet,
and the reduced decodes ``agent/capture/jpeg.py`` uses (1/2, 1/4 colour; luma; 1/8 luma).
Each round times three calls of each way in turn; the table gives the best round (least
disturbed by other processes) and the median CPU time per call.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from bench.common import REPO, make_video, median


def ways(video: Path) -> dict[str, Callable[[], Any]]:
    raw = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    raw.set(cv2.CAP_PROP_FORMAT, -1)
    packets = [raw.read()[1].reshape(-1).copy() for _ in range(20)]
    raw.release()
    ffmpeg = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    turn = iter(range(10**9))

    def read() -> None:
        if not ffmpeg.read()[0]:
            ffmpeg.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def decode(flag: int) -> Callable[[], Any]:
        return lambda: cv2.imdecode(packets[next(turn) % len(packets)], flag)

    return {"FFmpeg BGR (VideoCapture.read)": read,
            "imdecode full colour": decode(cv2.IMREAD_COLOR),
            "imdecode 1/2 colour": decode(cv2.IMREAD_REDUCED_COLOR_2),
            "imdecode 1/4 colour": decode(cv2.IMREAD_REDUCED_COLOR_4),
            "imdecode luma": decode(cv2.IMREAD_GRAYSCALE),
            "imdecode 1/8 luma": decode(cv2.IMREAD_REDUCED_GRAYSCALE_8)}


def compare(video: Path, rounds: int) -> dict[str, dict[str, float]]:
    cv2.setNumThreads(1)  # as the agent runs (pipeline.opencv_threads: 1)
    fns = ways(video)
    best = {k: float("inf") for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn(), fn(), fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / 3 * 1000.0)
            cpu[name].append((time.process_time() - c0) / 3 * 1000.0)
    base = best["FFmpeg BGR (VideoCapture.read)"]
    return {k: {"best_ms": best[k], "cpu_ms": median(cpu[k]), "vs_ffmpeg": base / best[k]}
            for k in fns}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / "results" / "cache")
    args = parser.parse_args(argv)
    res = compare(make_video(args.cache / "scene_640x480.avi"), args.rounds)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.rounds} rounds")
    print("| decode | best ms | median CPU ms | speed vs FFmpeg |\n|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['best_ms']:.3f} | {r['cpu_ms']:.3f} | {r['vs_ffmpeg']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
