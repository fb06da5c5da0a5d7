"""Rollout policy for group pushes: canaries, waves, soak time and the abort rule (pure logic).

Waves (``--waves``), over the live members left after the canaries:

* ``all``: one wave (the default; sent once on the group topic)
* ``N``: N devices per wave; ``P%``: P percent of them per wave
* ``A,B,...``: a list of counts or shares, one per wave; the last one repeats
* ``exp:START[:FACTOR]``: an exponential ramp, START devices, then FACTOR times more each wave

Abort rule: once at least ``min_answered`` devices have answered (a timeout counts as an
answer), the rollout stops before the next device is pushed when the share of failures
(``refused``, ``error``, ``rolled_back``, ``timeout``) is above ``max_failure_share``.
A device that rolls back during a soak counts as a failure. A failed canary always stops it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.errors import DeployError
from deploy.push import FAILED_RESULTS

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)(%?)$")
_EXP = re.compile(r"^exp:(\d+)(?::(\d+(?:\.\d+)?))?$")


@dataclass(frozen=True)
class RolloutPolicy:
    canaries: int = 0
    waves: str = "all"
    soak_s: float = 0.0
    min_answered: int = 1
    max_failure_share: float = 0.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.canaries < 0:
            raise DeployError("--canary must be 0 or more")
        if self.soak_s < 0 or self.timeout_s <= 0:
            raise DeployError("--soak must be 0 or more and --timeout above 0")
        if self.min_answered < 1:
            raise DeployError("--abort-after must be at least 1")
        if not 0.0 <= self.max_failure_share <= 1.0:
            raise DeployError("--max-failures must be a share between 0% and 100%")
        wave_sizes(self.waves, 1)  # refuse a bad spec before anything is sent

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RolloutPolicy:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def parse_share(text: str) -> float:
    """``10%`` or ``0.1`` -> 0.1."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as exc:
        raise DeployError(f"share {text!r}: expected a percentage such as 10%") from exc
    return value


def _one_size(item: str, total: int) -> int:
    match = _SIZE.match(item.strip())
    if not match:
        raise DeployError(f"--waves item {item!r}: expected a count such as 50 or a share "
                          f"such as 10% (or all, or exp:START[:FACTOR])")
    number, percent = float(match.group(1)), match.group(2)
    if number <= 0:
        raise DeployError(f"--waves item {item!r} gives an empty wave")
    return max(1, math.ceil(number * total / 100) if percent else int(number))


def _ramp(spec: str) -> list[float] | None:
    exp = _EXP.match(spec)
    if exp is None:
        return None
    start, factor = int(exp.group(1)), float(exp.group(2) or 2)
    if start < 1 or factor < 1:
        raise DeployError(f"--waves {spec!r}: START must be 1 or more, FACTOR 1 or more")
    return [start, factor]


def wave_sizes(spec: str, total: int) -> list[int]:
    """Sizes of the waves that cover ``total`` devices (their sum is ``total``)."""
    spec = spec.strip().lower()
    if spec == "all":
        return [total] if total > 0 else []
    ramp = _ramp(spec)
    items = [] if ramp else [_one_size(i, max(total, 1)) for i in spec.split(",")]
    sizes: list[int] = []
    while sum(sizes) < total:
        if ramp:
            size = int(ramp[0] * ramp[1] ** len(sizes))
        else:
            size = items[min(len(sizes), len(items) - 1)]
        sizes.append(min(size, total - sum(sizes)))
    return sizes


def plan_waves(live: Sequence[str], policy: RolloutPolicy) -> list[list[str]]:
    """Canaries (one per wave) first, then the waves, devices in name order."""
    devices = sorted(live)
    canaries = devices[:policy.canaries]
    rest = devices[policy.canaries:]
    waves = [[d] for d in canaries]
    start = 0
    for size in wave_sizes(policy.waves, len(rest)):
        waves.append(rest[start:start + size])
        start += size
    return waves


@dataclass(frozen=True)
class Verdict:
    stop: bool
    answered: int
    failed: int
    reason: str | None = None


def judge(results: Mapping[str, str], policy: RolloutPolicy, canaries: Sequence[str]
          ) -> Verdict:
    """Apply the abort rule to ``{device: result}`` of the devices that answered so far."""
    answered = len(results)
    failed = sum(1 for r in results.values() if r in FAILED_RESULTS)
    bad_canaries = [d for d in canaries if results.get(d) in FAILED_RESULTS]
    if bad_canaries:
        return Verdict(True, answered, failed,
                       f"canary {bad_canaries[0]} failed ({results[bad_canaries[0]]})")
    share = failed / answered if answered else 0.0
    if answered >= policy.min_answered and share > policy.max_failure_share:
        return Verdict(True, answered, failed,
                       f"{failed} of {answered} answered devices failed ({share:.0%}, above "
                       f"the {policy.max_failure_share:.0%} allowed once "
                       f"{policy.min_answered} have answered)")
    return Verdict(False, answered, failed)
