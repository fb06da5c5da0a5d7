"""Which conversions to try, and which one to keep."""

from __future__ import annotations

from agent.errors import ConversionError
from converter.graph import ConvertSpec
from converter.load import ModelInfo
from converter.options import AUTO_MODES, CALIBRATED_MODES, ConvertOptions, refusal
from converter.report import ModeResult

TIE_MARGIN = 0.10  # latencies this close are within the timing noise of one run


def candidates(opts: ConvertOptions, info: ModelInfo, has_calibration: bool,
               fused_ok: bool) -> list[ConvertSpec]:
    """The (mode, LSTM path) pairs to convert and measure."""
    if opts.quantize == "auto":
        modes = [m for m in AUTO_MODES if has_calibration or m not in CALIBRATED_MODES]
    elif opts.quantize in CALIBRATED_MODES and not has_calibration:
        raise ConversionError(f"--quantize {opts.quantize} needs --calibration data")
    else:
        modes = [opts.quantize]
    paths = ["unrolled"]
    if info.has_rnn and info.source in ("keras", "tf_keras_saved_model"):
        if opts.lstm_path == "fused" and not fused_ok:
            raise ConversionError("--lstm-path fused needs tf-keras (pip install --no-deps "
                                  "tf-keras==2.21.0); it is not installed")
        if opts.lstm_path == "fused":
            paths = ["fused"]
        elif opts.lstm_path == "auto" and fused_ok:
            paths = ["unrolled", "fused"]
    specs = []
    for path in paths:
        for mode in modes:
            if mode == "mixed":
                continue  # built by the mixed fallback from the int8 layer analysis
            specs.append(ConvertSpec(str(opts.model), mode, path, allow_flex=opts.allow_flex))
    if opts.quantize == "mixed":
        specs = [ConvertSpec(str(opts.model), "int8", paths[0], allow_flex=opts.allow_flex)]
    return specs


def needs_mixed(results: list[ModeResult], opts: ConvertOptions) -> ModeResult | None:
    """The int8 result that lost more than the int8 budget, when a mixed fallback is wanted."""
    if opts.quantize not in ("auto", "mixed", "int8"):
        return None
    ok = [r for r in results if r.mode == "int8" and not r.error and r.drop_points is not None]
    if not ok:
        return None
    worst = max(ok, key=lambda r: r.drop_points or 0.0)
    budget = -1.0 if opts.quantize == "mixed" else opts.int8_budget
    return worst if (worst.drop_points or 0.0) > budget else None


def _speed(r: ModeResult, threads: int) -> float:
    lat = r.latency_ms.get(str(threads)) or r.latency_ms.get("1") or {}
    return float(lat.get("p50", float("inf")))


def problem(r: ModeResult, opts: ConvertOptions) -> str | None:
    """Why a result cannot be kept: its error, or the Flex/custom/WHILE ops it holds."""
    if r.error:
        return r.error
    if opts.allow_flex:
        return None
    return refusal(r.ops, r.forbidden_sites, r.key)


def _failures(results: list[ModeResult], opts: ConvertOptions) -> str:
    found = [(r.key, problem(r, opts)) for r in results]
    return "; ".join(f"{key}: {why}" for key, why in found if why) or "no result"


def choose(results: list[ModeResult], opts: ConvertOptions) -> tuple[ModeResult, str]:
    """auto: the fastest result within --max-drop; otherwise the one requested mode."""
    usable = [r for r in results if problem(r, opts) is None]
    if opts.quantize not in ("auto",):
        wanted = [r for r in usable if r.mode == opts.quantize]
        if not wanted:
            raise ConversionError(f"--quantize {opts.quantize} failed: "
                                  f"{_failures(results, opts)}")
        within = [r for r in wanted if (r.drop_points or 0.0) <= opts.max_drop] or wanted
        best = min(within, key=lambda r: _speed(r, opts.threads))
        return best, f"{best.key} was requested"
    if not usable:
        raise ConversionError(f"every conversion failed: {_failures(results, opts)}")
    within = [r for r in usable if (r.drop_points or 0.0) <= opts.max_drop]
    if not within:
        best = min(usable, key=lambda r: r.drop_points or 0.0)
        return best, (f"no mode stays within --max-drop {opts.max_drop} points; kept "
                      f"{best.key}, the most accurate (drop {best.drop_points} points)")
    fastest = min(_speed(r, opts.threads) for r in within)
    tied = [r for r in within if _speed(r, opts.threads) <= fastest * (1.0 + TIE_MARGIN)]
    best = min(tied, key=_closeness)
    reason = (f"{best.key} is the fastest within --max-drop {opts.max_drop} points: p50 "
              f"{_speed(best, opts.threads):.3f} ms at {opts.threads} thread(s), drop "
              f"{best.drop_points} points, agreement {best.agreement}")
    others = [r for r in tied if r is not best]
    if others:
        reason += (f"; as fast within {TIE_MARGIN:.0%} (timing noise): "
                   + ", ".join(f"{r.key} {_speed(r, opts.threads):.3f} ms" for r in others)
                   + ", so the closest to Keras, then the smallest, was kept")
    slower = sorted((r for r in within if r not in tied), key=lambda r: _speed(r, opts.threads))
    if slower:
        reason += "; slower: " + ", ".join(f"{r.key} {_speed(r, opts.threads):.3f} ms"
                                           for r in slower[:3])
    over = [f"{r.key} (drop {r.drop_points})" for r in usable if r not in within]
    if over:
        reason += "; over the drop budget: " + ", ".join(over)
    return best, reason


def _closeness(r: ModeResult) -> tuple[float, float, int]:
    """Rank equally fast results: least accuracy lost, most agreement, smallest file."""
    return (max(r.drop_points or 0.0, 0.0), -(r.agreement or 0.0), r.size_bytes)
