"""What a person watching a push sees on stderr: a transfer line for one device, a progress
bar per wave (rich) for a rollout, then a summary by result with the failures and reasons."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from deploy.fleet import format_table
from deploy.push import FAILED_RESULTS, RESULT_SKIPPED, Outcome
from deploy.rollout_state import RolloutRecord

LIST_ALL_UP_TO = 20  # rollouts of more devices print a summary, not one line per device


class ProgressLine:
    """A one-line transfer display on stderr, updated at most 10 times a second."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled, self._last = label, enabled, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (done < total and now - self._last < 0.1):
            return
        self._last = now
        pct = 100 * done / total if total else 100
        sys.stderr.write(f"\r{self.label}: {done / 1e6:.2f}/{total / 1e6:.2f} MB ({pct:3.0f}%)")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


class NoDisplay:
    def wave_started(self, index: int, total: int, devices: list[str]) -> None:
        pass

    def answered(self, device: str, result: str) -> None:
        pass

    def soaking(self, seconds: float) -> None:
        pass

    def finished(self) -> None:
        pass


class WaveLines:
    """Without rich: one line per wave and per soak on stderr."""

    def __init__(self, title: str) -> None:
        self._title = title

    def wave_started(self, index: int, total: int, devices: list[str]) -> None:
        print(f"{self._title} wave {index + 1}/{total}: {len(devices)} device(s)",
              file=sys.stderr, flush=True)

    def answered(self, device: str, result: str) -> None:
        pass

    def soaking(self, seconds: float) -> None:
        print(f"soaking {seconds:g} s before the next wave", file=sys.stderr, flush=True)

    def finished(self) -> None:
        pass


def wave_display(title: str, enabled: bool) -> NoDisplay | WaveLines | WaveBars:
    if not enabled:
        return NoDisplay()
    try:
        return WaveBars(title)
    except ImportError:
        return WaveLines(title)


class WaveBars:
    """One rich progress bar per wave: answers so far, failures, and the soak countdown."""

    def __init__(self, title: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[failed]}"),
                                  console=Console(stderr=True), transient=False)
        self._title = title
        self._task: Any = None
        self._failed = 0
        self._progress.start()

    def wave_started(self, index: int, total: int, devices: list[str]) -> None:
        self._failed = 0
        self._task = self._progress.add_task(
            f"{self._title} wave {index + 1}/{total}", total=len(devices), failed="")

    def answered(self, device: str, result: str) -> None:
        if self._task is None:
            return
        self._failed += result in FAILED_RESULTS
        self._progress.update(self._task, advance=1,
                              failed=f"{self._failed} failed" if self._failed else "")

    def soaking(self, seconds: float) -> None:
        self._progress.console.print(f"soaking {seconds:g} s before the next wave")

    def finished(self) -> None:
        self._progress.stop()


def outcome_table(rows: Sequence[Outcome]) -> str:
    return format_table(["DEVICE", "RESULT", "VERSION", "REASON"],
                        [[o.device, o.result, o.version or "-", o.reason or ""] for o in rows])


def rollout_outcomes(record: RolloutRecord) -> list[Outcome]:
    rows = [Outcome(d, r.result, r.version, r.reason) for d, r in record.devices.items()]
    rows += [Outcome(d, "offline", None, reason) for d, reason in record.offline.items()]
    return sorted(rows, key=lambda o: o.device)


def rollout_summary(record: RolloutRecord, list_all: bool = False) -> str:
    rows = rollout_outcomes(record)
    m = record.model
    head = (f"rollout {record.id}: {m.get('name')} {m.get('version')} to group "
            f"{record.group}: {record.state}" + (f" ({record.reason})" if record.reason else ""))
    counts = Counter(o.result for o in rows)
    by_result = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
    lines = [head, f"{len(rows)} devices in {len(record.waves)} wave(s): {by_result}"]
    if list_all or len(rows) <= LIST_ALL_UP_TO:
        return "\n".join([outcome_table(rows), "", *lines])
    failed = [o for o in rows if o.result in FAILED_RESULTS]
    if failed:
        lines += ["", "failures:", outcome_table(failed)]
    skipped = sum(o.result == RESULT_SKIPPED for o in rows)
    if skipped:
        lines.append(f"{skipped} device(s) skipped; `edge-deploy rollout show {record.id}` "
                     f"lists every device")
    return "\n".join(lines)


def rollout_json(record: RolloutRecord) -> str:
    rows = rollout_outcomes(record)
    return json.dumps({
        "rollout": record.id, "group": record.group, "model": record.model,
        "state": record.state, "reason": record.reason, "waves": len(record.waves),
        "wave_index": record.wave_index,
        "counts": dict(sorted(Counter(o.result for o in rows).items())),
        "devices": [{"device": o.device, "result": o.result, "version": o.version,
                     "reason": o.reason} for o in rows]}, indent=2)


def rollouts_table(records: Sequence[RolloutRecord], running: set[str]) -> str:
    rows = []
    for r in sorted(records, key=lambda r: r.created):
        counts = Counter(d.result for d in r.devices.values())
        state = r.state + (" (process alive)" if r.id in running else "")
        rows.append([r.id, r.group, f"{r.model.get('name')} {r.model.get('version')}",
                     state, f"{r.wave_index}/{len(r.waves)}",
                     ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))])
    return format_table(["ID", "GROUP", "MODEL", "STATE", "WAVES", "RESULTS"], rows)
