"""The usual alternative as a process: TensorFlow + Keras labelling a video at 30 fps.

    python -m bench.tf_process KERAS_MODEL MANIFEST VIDEO --seconds S

Prints ``first <unix time>`` after its first prediction, then keeps predicting (eager
``model(x)``) until ``S`` seconds pass, so the parent can read its resident memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("keras")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("video", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import cv2
    import keras
    import numpy as np

    from agent.manifest import load_manifest
    from bench.tfcompare import _tf_input

    manifest = load_manifest(args.manifest)
    model = keras.saving.load_model(args.keras, compile=False)
    cap = cv2.VideoCapture(str(args.video))
    end = time.monotonic() + args.seconds
    first = True
    while time.monotonic() < end:
        ok, frame = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        int(np.argmax(model(_tf_input(frame, manifest), training=False).numpy()))
        if first:
            print(f"first {time.time():.6f}", flush=True)
            first = False
        time.sleep(1.0 / args.fps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
