"""The refusal of WHILE / Flex / custom ops: a conversion that really yields a WHILE op
exits 2 naming the op and its layer, with no files left, for auto and for a named mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ConversionError
from converter.cli import main
from converter.options import ConvertOptions, refusal
from converter.report import ModeResult
from converter.selection import choose

# the session's reference models train inside the first test's setup: on a busy machine
# that alone can take minutes
pytestmark = pytest.mark.timeout(1800)
ROOT = Path(__file__).resolve().parents[1]
# A static-shape tf.while_loop inside the name scope "smoother": TFLite keeps it as WHILE.
WHILE_SAVED_MODEL = """
import sys
import tensorflow as tf

class Looper(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(tf.ones([4, 3]) * 0.1)

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 4], tf.float32, name="x")])
    def __call__(self, x):
        with tf.name_scope("smoother"):
            _, y = tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 0.5 + 1.0),
                                 [tf.constant(0), x])
        return {"scores": tf.nn.softmax(tf.matmul(tf.reduce_mean(y, axis=1), self.w))}

m = Looper()
tf.saved_model.save(m, sys.argv[1], signatures={"serving_default": m.__call__})
"""


@pytest.fixture(scope="module")
def while_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("while") / "looper"
    subprocess.run([sys.executable, "-c", WHILE_SAVED_MODEL, str(path)], check=True, cwd=ROOT,
                   capture_output=True, timeout=300)
    return path


def test_refusal_names_each_forbidden_op_and_its_layer() -> None:
    why = refusal({"WHILE": 1, "ADD": 2, "FlexTensorListReserve": 1, "CUSTOM": 1},
                  {"WHILE": ["model/lstm"], "FlexTensorListReserve": ["model/gru"]},
                  "mode int8")
    assert why is not None and why.startswith("mode int8: ")
    assert "WHILE from model/lstm" in why and "FlexTensorListReserve from model/gru" in why
    assert "CUSTOM from an unnamed scope" in why and "ADD" not in why
    assert refusal({"ADD": 2, "FULLY_CONNECTED": 1}, {}, "mode int8") is None


def test_a_named_mode_with_a_loop_is_refused_by_name() -> None:
    looped = ModeResult("float32", ops={"WHILE": 1, "ADD": 1},
                        forbidden_sites={"WHILE": ["smoother"]}, agreement=1.0)
    opts = ConvertOptions(model=Path("m"), out=Path("o"), quantize="float32")
    with pytest.raises(ConversionError, match="float32: the TFLite graph contains WHILE from "
                                              "smoother"):
        choose([looped], opts)
    kept, _ = choose([looped], ConvertOptions(model=Path("m"), out=Path("o"),
                                              quantize="float32", allow_flex=True))
    assert kept is looped


@pytest.mark.parametrize("mode", ["float32", pytest.param("auto", marks=pytest.mark.slow)])
def test_a_real_while_loop_exits_2_naming_op_and_layer(
        while_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        mode: str) -> None:
    out = tmp_path / "out"
    code = main([str(while_model), "--out", str(out), "--quantize", mode,
                 "--latency-runs", "5"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "WHILE from smoother" in err and "--allow-flex" in err
    assert not out.exists()
