"""Time a model push end to end on loopback: edge-deploy's sender -> Mosquitto -> ModelReceiver.

    .venv/bin/python -m bench.push_time [--mb 5] [--chunk-kb 64 256 1024] [--random]

Prints, per chunk size: transfer time (manifest to commit acknowledged by the broker), time
until the device's result (sha256, signature, load, check, warm-up, install, activate) and the
throughput. ``--random`` sends random bytes instead of a real model (transport only: the device
refuses it at load time, which is reported).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.models.signing import generate_keypair, load_private_key
from bench.support.broker import Mosquitto
from bench.support.deploy_helpers import AgentHarness, write_bundle
from deploy.broker import MqttSession
from deploy.push import load_bundle, send_push


def big_tflite(megabytes: float) -> bytes:
    """A real float32 model of about ``megabytes`` MB (one wide Dense layer over 32x32x1)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    units = max(8, int(megabytes * 1e6 / 4 / 1024))
    model = tf.keras.Sequential([
        tf.keras.Input((32, 32, 1), batch_size=1),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(units, activation="relu"),
        tf.keras.layers.Dense(3, activation="softmax"),
    ])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def run(megabytes: float, chunk_kbs: list[int], random_bytes: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = (np.random.default_rng(0).bytes(int(megabytes * 1e6)) if random_bytes
                 else big_tflite(megabytes))
        keys = generate_keypair(tmp / "keys")
        key = load_private_key(keys.private)
        broker = Mosquitto(tmp / "broker", persistence=False).start()
        agent = AgentHarness(broker.port, tmp / "state", "bench", trusted_keys=[keys.public],
                             max_model_bytes=len(model) + 1)
        session = MqttSession(broker.url)
        print(f"model: {len(model) / 1e6:.2f} MB ({'random bytes' if random_bytes else 'TFLite'})"
              f", loopback Mosquitto, QoS 1")
        print(f"{'chunk':>8}  {'transfer_s':>10}  {'to_result_s':>11}  {'MB/s':>6}  result")
        try:
            for i, kb in enumerate(chunk_kbs):
                bundle = load_bundle(write_bundle(tmp / f"b{i}", model, side=32,
                                                  version=f"{i + 1}"))
                push_id = f"bench-{i}"
                t0 = time.perf_counter()
                send_push(session, "edge/bench/model", push_id, bundle, key, kb * 1024)
                t1 = time.perf_counter()
                result = agent.wait_result(push_id, timeout=120)
                t2 = time.perf_counter()
                print(f"{kb:>6}KB  {t1 - t0:>10.3f}  {t2 - t0:>11.3f}  "
                      f"{len(model) / 1e6 / (t1 - t0):>6.1f}  {result['result']}"
                      f"{'' if result['result'] == 'ok' else ': ' + str(result['reason'])[:60]}")
        finally:
            session.close()
            agent.close()
            broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=5.0)
    p.add_argument("--chunk-kb", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--random", action="store_true")
    args = p.parse_args()
    run(args.mb, args.chunk_kb, args.random)


if __name__ == "__main__":
    main()
