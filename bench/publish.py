"""Publishing: QoS 1 labels/s through the agent's MQTT port, outbox on disk vs in memory.

Reuses ``bench.publish_rate`` (the MQTT port owner's benchmark): a subscriber confirms every
message; rounds are interleaved so drift hits both modes alike.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from agent.mqtt.outbox import Outbox
from bench.common import median


def rates(mq: Any, count: int, rounds: int, protocol: str = "5") -> dict[str, Any]:
    from bench.publish_rate import outbox_costs, run_once

    runs: dict[str, list[float]] = {"outbox_on": [], "outbox_off": []}
    with tempfile.TemporaryDirectory(prefix="bench-pub-") as tmp:
        folder = Path(tmp)
        for i in range(rounds):
            for mode in runs:
                box = Outbox(folder / f"o{i}.db") if mode == "outbox_on" else Outbox.disabled()
                try:
                    runs[mode].append(run_once(mq, box, count, protocol))
                finally:
                    box.close()
        costs = outbox_costs(folder, count=min(count, 10_000))
    med = {mode: median(values) for mode, values in runs.items()}
    return {"labels_per_s": med, "runs": runs, "on_over_off": med["outbox_on"] / med["outbox_off"],
            "outbox_us": {name: {"put": put, "ack_per_msg": ack}
                          for name, (put, ack) in costs.items()},
            "count": count, "protocol": protocol}
