"""Converter pieces that need no TensorFlow: data checks, XNNPACK coverage, the auto choice."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.errors import ConversionError
from converter.data import InputPrep, check_prep, load_data, load_labels, resize_image
from converter.graph import set_unroll
from converter.options import ConvertOptions
from converter.report import (
    ModeResult,
    dequantize_output,
    quantize_input,
    set_drops,
    table,
    xnnpack_coverage,
)
from converter.selection import choose

FRAME = InputPrep((28, 28, 1), (0.0,), (255.0,), "gray", "stretch")


def op(index: int, name: str, inputs: list[int], outputs: list[int]) -> dict[str, object]:
    return {"index": index, "op_name": name, "inputs": inputs, "outputs": outputs}


def test_xnnpack_coverage_finds_the_nodes_left_out() -> None:
    ops = [op(0, "CONV_2D", [0, 5], [10]), op(1, "FULLY_CONNECTED", [10, 6], [11]),
           op(2, "SOFTMAX", [11], [12]), op(3, "DELEGATE", [0, 5, 6], [11])]
    assert xnnpack_coverage(ops) == (2, 3, 1, {"SOFTMAX": 1})


def test_quantize_round_trip() -> None:
    detail = {"dtype": np.int8, "quantization": (1 / 255, -128)}
    q = quantize_input(np.array([[0.0, 0.6, 1.0, 2.0]], np.float32), detail)
    assert q.dtype == np.int8 and q.tolist() == [[-128, 25, 127, 127]]
    assert np.allclose(dequantize_output(q, detail), [[0.0, 153 / 255, 1.0, 1.0]])


def test_set_unroll_reaches_nested_recurrent_layers() -> None:
    config = {"layers": [{"class_name": "Bidirectional", "config": {
        "layer": {"class_name": "LSTM", "config": {"unroll": False}}}},
        {"class_name": "Dense", "config": {"units": 3}}]}
    out = set_unroll(config)
    assert out["layers"][0]["config"]["layer"]["config"]["unroll"] is True
    assert "unroll" not in out["layers"][1]["config"]
    assert config["layers"][0]["config"]["layer"]["config"]["unroll"] is False


def test_npz_shape_and_channel_axis(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 28, 28), np.uint8), y=np.arange(4))
    data = load_data(good, FRAME, None, "eval")
    assert data.x.shape == (4, 28, 28, 1) and data.y is not None
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 28, 28, 3), np.uint8))
    with pytest.raises(ConversionError, match=r"x has shape \[4, 28, 28, 3\]"):
        load_data(bad, FRAME, None, "calibration")
    short = tmp_path / "short.npz"
    np.savez(short, x=np.zeros((4, 28, 28), np.uint8), y=np.arange(3))
    with pytest.raises(ConversionError, match="x has 4 samples but y has 3"):
        load_data(short, FRAME, None, "eval")
    text = tmp_path / "text.npz"
    text.write_text("not numpy")
    with pytest.raises(ConversionError, match=r"not a readable \.npz"):
        load_data(text, FRAME, None, "eval")


def test_image_folder_with_label_subfolders(tmp_path: Path) -> None:
    for label in ("3", "7"):
        (tmp_path / label).mkdir()
        cv2.imwrite(str(tmp_path / label / "a.png"), np.full((40, 60, 3), 200, np.uint8))
    data = load_data(tmp_path, FRAME, [str(i) for i in range(10)], "eval")
    assert data.x.shape == (2, 28, 28, 1) and data.y is not None
    assert sorted(data.y.tolist()) == [3, 7]
    seq = InputPrep((30, 8))
    with pytest.raises(ConversionError, match="only works for image models"):
        load_data(tmp_path, seq, None, "eval")


def test_resize_modes_keep_the_target_size() -> None:
    img = np.full((40, 80, 3), 255, np.uint8)
    for mode in ("stretch", "letterbox", "center_crop"):
        assert resize_image(img, 28, 28, mode).shape == (28, 28, 3)
    boxed = resize_image(img, 28, 28, "letterbox")
    assert boxed[0, 0, 0] == 0 and boxed[14, 14, 0] == 255


def test_labels_and_normalisation_checks(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n\n")
    assert load_labels(labels, 2) == ["a", "b"]
    with pytest.raises(ConversionError, match="2 labels but the model outputs 3 classes"):
        load_labels(labels, 3)
    with pytest.raises(ConversionError, match="--mean has 2 values"):
        check_prep(InputPrep((30, 8), (0.0, 1.0), (1.0,)))


def result(mode: str, acc: float, p50: float, threads: int = 2) -> ModeResult:
    r = ModeResult(mode, accuracy=acc, agreement=1.0)
    r.latency_ms = {"1": {"p50": p50, "p95": p50}, str(threads): {"p50": p50, "p95": p50}}
    return r


def test_auto_picks_the_fastest_within_the_drop_budget() -> None:
    results = [result("float32", 0.98, 0.30), result("int8", 0.95, 0.10),
               result("dynamic", 0.975, 0.20)]
    set_drops(results, 0.98)
    opts = ConvertOptions(model=Path("m.keras"), out=Path("out"), max_drop=1.0)
    best, reason = choose(results, opts)
    assert best.mode == "dynamic"
    assert "over the drop budget: int8" in reason
    printed = table(results, 2, best.key, 0.98)
    assert "*dynamic" in printed and "keras" in printed


def test_auto_refuses_loops_unless_allowed() -> None:
    looped = result("float32", 0.98, 0.05)
    looped.ops, looped.forbidden = {"WHILE": 1}, ["WHILE"]
    clean = result("dynamic", 0.98, 0.2)
    set_drops([looped, clean], 0.98)
    opts = ConvertOptions(model=Path("m.keras"), out=Path("out"))
    assert choose([looped, clean], opts)[0].mode == "dynamic"


def test_auto_breaks_latency_ties_by_closeness_to_keras() -> None:
    fast_int8 = result("int8", 0.98, 0.100)
    fast_int8.agreement = 0.99
    fast_dynamic = result("dynamic", 0.98, 0.105)
    slow = result("float32", 0.98, 0.30)
    set_drops([fast_int8, fast_dynamic, slow], 0.98)
    opts = ConvertOptions(model=Path("m.keras"), out=Path("out"))
    best, reason = choose([fast_int8, fast_dynamic, slow], opts)
    assert best.mode == "dynamic"
    assert "as fast within 10%" in reason and "slower: float32" in reason
