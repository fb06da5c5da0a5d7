"""Markdown tables, JSON and a PNG chart from one benchmark run's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import fmt


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def machine_md(m: dict[str, Any], command: str, elapsed_s: float) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return (f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python "
            f"{m['python']}; {pk}; {m['mosquitto']}.\n\nCommand: `{command}` "
            f"({elapsed_s / 60:.1f} min).")


def e2e_md(rows: list[dict[str, Any]]) -> str:
    head = ["model", "threads", "decode/s FFmpeg full", "decode/s as the agent decodes",
            "preprocess/s", "invoke/s", "CPU ms/frame (decode + pre + invoke + post + "
            "publish)", "CPU bound/s", "slowest stage alone/s", "limit (lower)",
            "agent fps_out", "fps_out / limit", "other sessions' load, cores (stages / agent)",
            "target >= 0.85"]
    body = []
    for r in rows:
        m = r["median"]
        body.append([r["model"], str(r["threads"]), fmt(m["decode_ffmpeg_per_s"], ".0f"),
                     fmt(m["decode_per_s"], ".0f"), fmt(m["preprocess_per_s"], ".0f"),
                     fmt(m["invoke_per_s"], ".0f"), fmt(m["cpu_ms_per_frame"], ".2f"),
                     fmt(m["cpu_bound_per_s"], ".0f"),
                     f"{fmt(m['slowest_per_s'], '.0f')} ({m['slowest_stage']})",
                     f"{fmt(m['limit_per_s'], '.0f')} ({m['limit_kind']})",
                     fmt(m["fps_out"], ".0f"), fmt(m["ratio"], ".2f"),
                     f"{fmt(m.get('stages_foreign_cores'), '.2f')} / "
                     f"{fmt(m.get('agent_foreign_cores'), '.2f')}",
                     _mark(m["ratio"] >= 0.85)])
    return _table(head, body)


def multicam_md(res: dict[str, Any]) -> str:
    head = ["cameras at 30 fps", "labels/s in all", "lowest / highest source share of 30 fps",
            "most frames dropped by a source", "worst source capture-to-publish p99 ms",
            "agent cores", "other sessions' load, cores", "held (>= 0.95 each, <= 2% dropped)"]
    body = [[str(r["cameras"]), fmt(r["total_fps"], ".1f"),
             f"{fmt(r['min_share'], '.3f')} / {fmt(r['max_share'], '.3f')}",
             fmt(100 * r["max_dropped_share"], ".1f") + "%", fmt(r["worst_p99_ms"], ".1f"),
             fmt(r["our_cores"], ".2f"), fmt(r["foreign_cores"], ".2f"),
             "yes" if r["min_share"] >= 0.95 and r["max_dropped_share"] <= 0.02 else "no"]
            for r in res["runs"]]
    fair = res["fairness"]
    per = ", ".join(f"{n} {fmt(v['fps'], '.1f')}/s (p99 {fmt(v['p99_ms'], '.1f')} ms, "
                    f"dropped {fmt(100 * v['dropped_share'], '.1f')}%)"
                    for n, v in fair["sources"].items())
    return (_table(head, body) + f"\n\nModel {res['model']}, 2 threads. Sustained: "
            f"{res['sustained']} cameras at 30 fps. At 4 cameras, per source: {per}.")


def naive_md(res: dict[str, Any]) -> str:
    m = res["median"]
    head = ["", "TF Lite example loop (one thread)", "agent", "agent / loop"]
    rows = [["full speed, frames/s", fmt(m["naive_fps"], ".0f"), fmt(m["agent_fps"], ".0f"),
             fmt(m["speedup"], ".2f") + "x (target >= 1.5x)"],
            ["30 fps, capture-to-arrival p50 ms", fmt(m["naive_arrival_p50"], ".2f"),
             fmt(m["agent_arrival_p50"], ".2f"), "-"],
            ["30 fps, capture-to-arrival p99 ms", fmt(m["naive_arrival_p99"], ".2f"),
             fmt(m["agent_arrival_p99"], ".2f"), "-"]]
    return (_table(head, rows) + f"\n\nModel {res['model']}, {res['threads']} threads, "
            f"{len(res['runs'])} interleaved round(s), other sessions' load "
            f"{fmt(m['foreign_cores'], '.2f')} cores. The loop has no outbox (a label is lost "
            "when the broker is away); the agent's outbox is on.")


def arrival_md(res: dict[str, Any]) -> str:
    head = ["variant", "capture-to-publish p50 / p99 ms", "capture-to-arrival p50 / p99 ms",
            "arrival p99 - publish p99 ms (target <= 5)", "other sessions' load, cores"]
    body = [[name, f"{fmt(m['publish_p50'], '.2f')} / {fmt(m['publish_p99'], '.2f')}",
             f"{fmt(m['arrival_p50'], '.2f')} / {fmt(m['arrival_p99'], '.2f')}",
             fmt(m["arrival_minus_publish_p99"], ".2f"), fmt(m["other_load"], ".2f")]
            for name, m in res["median"].items()]
    text = _table(head, body)
    if res.get("trace"):
        text += "\n\nTrace of one run (now), per label:\n\n" + _table(
            ["step", "p50 ms", "p99 ms", "max ms"],
            [[k, fmt(v["p50"], ".3f"), fmt(v["p99"], ".3f"), fmt(v["max"], ".3f")]
             for k, v in res["trace"].items()])
    return text


def tf_md(rows: list[dict[str, Any]]) -> str:
    head = ["model", "Keras predict ms/frame", "Keras model(x) ms/frame", "agent ms/frame",
            "predict / agent", "model(x) / agent", "target >= 10x"]
    body = [[r["model"], fmt(r["ms"]["keras_predict"], ".3f"), fmt(r["ms"]["keras_call"], ".3f"),
             fmt(r["ms"]["agent"], ".3f"), fmt(r["predict_over_agent"], ".0f") + "x",
             fmt(r["call_over_agent"], ".0f") + "x",
             _mark(r["call_over_agent"] >= 10) if r.get("target") else "-"] for r in rows]
    return _table(head, body)


def footprint_md(rows: list[dict[str, Any]]) -> str:
    head = ["model", "agent RSS MB", "TensorFlow RSS MB", "TF / agent", "agent start to first "
            "label s", "TF start to first prediction s", "targets (<= 150 MB, < 1.5 s)"]
    body = []
    for r in rows:
        a, t = r["median"]["agent"], r["median"]["tensorflow"]
        ok = a["rss_mb"] <= 150 and a["startup_s"] < 1.5
        body.append([r["model"], fmt(a["rss_mb"], ".0f"), fmt(t["rss_mb"], ".0f"),
                     fmt(r["rss_ratio"], ".1f") + "x", fmt(a["startup_s"], ".2f"),
                     fmt(t["startup_s"], ".2f"), _mark(ok) if r.get("target") else "-"])
    return _table(head, body)


def latency_md(rows: list[dict[str, Any]]) -> str:
    head = ["model", "threads", "labels/s", "invoke p50 / p99 ms (alone)",
            "capture-to-publish p50 / p99 ms", "capture-to-arrival p50 / p99 ms",
            "publish p99 - invoke p99 ms", "target <= 10 ms"]
    body = [[r["model"], str(r["threads"]), fmt(r["rate"], ".1f"),
             f"{fmt(r['invoke_p50'], '.2f')} / {fmt(r['invoke_p99'], '.2f')}",
             f"{fmt(r['publish_p50'], '.2f')} / {fmt(r['publish_p99'], '.2f')}",
             f"{fmt(r['arrival_p50'], '.2f')} / {fmt(r['arrival_p99'], '.2f')}",
             fmt(r["publish_p99_minus_invoke_p99"], ".2f"),
             _mark(r["publish_p99_minus_invoke_p99"] <= 10)] for r in rows]
    return _table(head, body)


def publish_md(p: dict[str, Any]) -> str:
    lps = p["labels_per_s"]
    rows = [["outbox on (SQLite, WAL)", fmt(lps["outbox_on"], ",.0f"),
             ", ".join(fmt(v, ",.0f") for v in p["runs"]["outbox_on"])],
            ["outbox off (in memory)", fmt(lps["outbox_off"], ",.0f"),
             ", ".join(fmt(v, ",.0f") for v in p["runs"]["outbox_off"])]]
    costs = p["outbox_us"]
    text = _table(["mode", "labels/s (median)", "runs"], rows)
    text += (f"\n\nQoS 1, MQTT {p['protocol']}, {p['count']} labels per run, a subscriber "
             f"confirms each. On / off = {p['on_over_off']:.2f}. Outbox cost per message: "
             + "; ".join(f"{k} put {v['put']:.1f} us, ack {v['ack_per_msg']:.1f} us"
                         for k, v in costs.items()) + ".")
    return text


def quant_md(rows: list[dict[str, Any]]) -> str:
    head = ["model", "mode", "size KB", "p50 1 thread ms", "p50 2 threads ms", "accuracy",
            "agreement with Keras"]
    body = [[r["family"], r["mode"], fmt(r["size_kb"], ".1f"), fmt(r["p50_1t_ms"], ".3f"),
             fmt(r["p50_2t_ms"], ".3f"), fmt(r["accuracy"], ".4f"), fmt(r["agreement"], ".4f")]
            for r in rows]
    return _table(head, body)


def hotpath_md(rows: list[dict[str, Any]]) -> str:
    body = [[r["stage"], fmt(r["before_us"], ".1f"), fmt(r["after_us"], ".1f"),
             fmt(r["speedup"], ".2f") + "x", r.get("output", "-")] for r in rows]
    return _table(["stage (one call)", "before us", "after us", "speedup", "output after vs "
                   "before"], body)


SECTIONS = (
    ("e2e", "a. Against the limit: agent end to end vs min(slowest stage alone, CPU bound)",
     e2e_md),
    ("tf", "b. Against the usual alternative: Keras in TensorFlow per frame", tf_md),
    ("footprint", "c. Memory and start-up", footprint_md),
    ("latency", "d. Latency under load (30 fps paced file)", latency_md),
    ("publish", "e. Publishing", publish_md),
    ("quant", "f. Quantization", quant_md),
    ("hotpath", "g. Hot-path changes, before / after in the same run", hotpath_md),
    ("multicam", "h. Several cameras into one model (30 fps each)", multicam_md),
    ("naive", "i. Against the TF Lite Raspberry Pi example loop", naive_md),
    ("arrival", "j. Capture to arrival at a subscriber (30 fps, outbox on, QoS 1)", arrival_md),
)


def markdown(results: dict[str, Any]) -> str:
    parts = [f"# Benchmark ({'quick' if results['quick'] else 'full'} run)",
             machine_md(results["machine"], results["command"], results["elapsed_s"])]
    for key, title, render in SECTIONS:
        if results.get(key):
            parts.append(f"## {title}\n\n{render(results[key])}")
    for note in results.get("notes", []):
        parts.append(f"> {note}")
    return "\n\n".join(parts) + "\n"


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path, Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    md = out / "benchmark.md"
    md.write_text(markdown(results))
    js = out / "benchmark.json"
    js.write_text(json.dumps(results, indent=2, default=str))
    return md, js, chart(results, out / "benchmark.png")


def chart(results: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, grid = plt.subplots(2, 3, figsize=(17, 9))
    axes = list(grid[0]) + list(grid[1])
    if results.get("e2e"):
        rows = results["e2e"]
        axes[0].bar(range(len(rows)), [r["median"]["ratio"] for r in rows])
        axes[0].axhline(0.85, color="red", linestyle="--", label="target 0.85")
        axes[0].set_xticks(range(len(rows)),
                           [f"{r['model'].replace('/', chr(10))}\n{r['threads']}t"
                            for r in rows], fontsize=6)
        axes[0].set_title("a. agent fps_out / min(slowest stage, CPU bound)")
        axes[0].legend(fontsize=7)
    _extra_panels(results, axes[3:])
    if results.get("quant"):
        rows = results["quant"]
        names = [f"{r['family']}\n{r['mode']}" for r in rows]
        axes[1].barh(names, [r["p50_2t_ms"] for r in rows])
        axes[1].set_xscale("log")
        axes[1].set_title("f. invoke p50 at 2 threads (ms, log)")
        axes[1].tick_params(axis="y", labelsize=6)
    if results.get("tf"):
        rows = results["tf"]
        x = range(len(rows))
        for i, (k, lab) in enumerate((("keras_predict", "predict"), ("keras_call", "model(x)"),
                                      ("agent", "agent"))):
            axes[2].bar([j + 0.27 * i for j in x], [r["ms"][k] for r in rows], width=0.27,
                        label=lab)
        axes[2].set_xticks([j + 0.27 for j in x], [r["model"] for r in rows], fontsize=7)
        axes[2].set_yscale("log")
        axes[2].set_title("b. ms per frame (log)")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _extra_panels(results: dict[str, Any], axes: list[Any]) -> None:
    if results.get("multicam"):
        runs = results["multicam"]["runs"]
        axes[0].plot([r["cameras"] for r in runs], [r["min_share"] for r in runs], "o-",
                     label="lowest source share")
        axes[0].axhline(0.95, color="red", linestyle="--", label="0.95")
        axes[0].set_xlabel("cameras at 30 fps")
        axes[0].set_title("h. one model, several cameras")
        axes[0].legend(fontsize=7)
    if results.get("naive"):
        m = results["naive"]["median"]
        axes[1].bar(["loop fps", "agent fps"], [m["naive_fps"], m["agent_fps"]])
        axes[1].set_title("i. vs the TF Lite example loop (full speed)")
    if results.get("arrival"):
        med = results["arrival"]["median"]
        names = list(med)
        axes[2].barh(names, [med[n]["arrival_p99"] for n in names], label="arrival p99")
        axes[2].barh(names, [med[n]["publish_p99"] for n in names], label="publish p99")
        axes[2].set_title("j. capture to arrival p99 (ms)")
        axes[2].tick_params(axis="y", labelsize=6)
        axes[2].legend(fontsize=7)
