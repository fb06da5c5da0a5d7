"""Runtime and delegate selection with the real interpreter; the external-delegate path with a
real shared library built by the test (no GPU or Edge TPU exists here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.errors import DelegateError, ModelLoadError, ModelMismatchError, RuntimeNotFoundError
from agent.inference.engine import DelegateSpec, Engine, import_runtime
from agent.inference.preprocess import FramePreprocessor
from agent.manifest import load_manifest

DATA = Path(__file__).resolve().parents[1] / "agent" / "data"
CNN = DATA / "digits_cnn.tflite"

# A delegate that claims no nodes: enough to exercise loading, option passing and errors.
NOOP_DELEGATE_C = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
typedef struct TfLiteDelegate {
  void* data_;
  int (*Prepare)(void* context, struct TfLiteDelegate* delegate);
  int (*CopyFromBufferHandle)(void*, struct TfLiteDelegate*, int, void*);
  int (*CopyToBufferHandle)(void*, struct TfLiteDelegate*, int, void*);
  void (*FreeBufferHandle)(void*, struct TfLiteDelegate*, int*);
  int64_t flags;
  void* opaque_delegate_builder;
} TfLiteDelegate;
static int prepare(void* context, TfLiteDelegate* d) { return 0; }
static char seen[256];
TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                              void (*report_error)(const char*)) {
  seen[0] = 0;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(keys[i], "fail") == 0 && report_error) {
      report_error("asked to fail");
      return NULL;
    }
    strncat(seen, keys[i], sizeof(seen) - strlen(seen) - 1);
  }
  TfLiteDelegate* d = calloc(1, sizeof(TfLiteDelegate));
  d->Prepare = prepare;
  return d;
}
void tflite_plugin_destroy_delegate(TfLiteDelegate* d) { free(d); }
const char* noop_seen_keys(void) { return seen; }
"""


@pytest.fixture(scope="module")
def noop_delegate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the test delegate")
    folder = tmp_path_factory.mktemp("delegate")
    src, lib = folder / "noop.c", folder / "libnoop_delegate.so"
    src.write_text(NOOP_DELEGATE_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True)
    return lib


def zeros_for(engine: Engine) -> np.ndarray:
    return np.zeros(engine.input_shape, engine.input_dtype)


def test_default_runtime_is_ai_edge_litert_with_xnnpack() -> None:
    engine = Engine(CNN, num_threads=2)
    assert engine.info.package == "ai_edge_litert" and engine.info.delegate == "xnnpack"
    assert engine.invoke(zeros_for(engine)).shape == (1, 10)
    engine.check_manifest(load_manifest(DATA / "digits_cnn.json"))


def test_reference_kernels_give_the_same_probabilities() -> None:
    """XNNPACK and the reference kernels agree on real digits, float probability against float
    probability (truncated to int, every probability is 0 and any two outputs agree); the
    tolerance is tight enough to tell the answers for two different digits apart."""
    manifest = load_manifest(DATA / "digits_cnn.json")
    sample = np.load(DATA / "digits_sample.npz")
    pre = FramePreprocessor(manifest.input)
    # copies: the preprocessor writes every frame into the same buffer
    xs = [pre(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)).copy() for img in sample["x"][:32]]
    fast_engine, ref_engine = Engine(CNN), Engine(CNN, delegate=DelegateSpec(kind="none"))
    fast = np.concatenate([fast_engine.invoke(x) for x in xs])
    ref = np.concatenate([ref_engine.invoke(x) for x in xs])
    assert fast.dtype == ref.dtype == np.float32 and fast.shape == (len(xs), 10)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)
    assert (fast.argmax(axis=1) == ref.argmax(axis=1)).all()
    truth = sample["y"][:32]
    other_digit = truth != np.roll(truth, 1)
    assert other_digit.any()
    gaps = np.abs(fast - np.roll(ref, 1, axis=0)).max(axis=1)
    assert (gaps[other_digit] > 1e-5).all(), "the tolerance cannot tell digits apart"


def test_runtime_preference_and_clear_error_when_missing() -> None:
    _, name = import_runtime("auto")
    assert name == "ai_edge_litert"
    with pytest.raises(RuntimeNotFoundError, match="unknown runtime 'onnx'"):
        import_runtime("onnx")
    try:
        import tflite_runtime  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeNotFoundError, match="tflite_runtime: ModuleNotFoundError"):
            import_runtime("tflite_runtime")


def test_external_delegate_loads_with_its_options(noop_delegate: Path) -> None:
    spec = DelegateSpec(kind="external", library=str(noop_delegate),
                        options={"cache_dir": "/tmp", "priority": "high"}, fallback="fail")
    engine = Engine(CNN, delegate=spec)
    assert engine.info.delegate == "external:libnoop_delegate.so"
    assert engine.info.fallback_reason is None
    assert engine.invoke(zeros_for(engine)).shape == (1, 10)
    import ctypes

    seen = ctypes.CDLL(str(noop_delegate))
    seen.noop_seen_keys.restype = ctypes.c_char_p
    assert set(seen.noop_seen_keys().decode().replace("priority", " priority").split()) \
        == {"cache_dir", "priority"}


# ai_edge_litert's Delegate.__del__ touches an attribute its failed __init__ never set.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_delegate_failure_falls_back_to_cpu_or_fails(noop_delegate: Path,
                                                     tmp_path: Path) -> None:
    missing = DelegateSpec(kind="external", library=str(tmp_path / "libedgetpu.so.1"))
    engine = Engine(CNN, delegate=missing)
    assert engine.info.delegate == "xnnpack"
    assert "libedgetpu.so.1" in (engine.info.fallback_reason or "")
    refusing = DelegateSpec(kind="external", library=str(noop_delegate),
                            options={"fail": "1"}, fallback="fail")
    with pytest.raises(DelegateError, match="failed to load"):
        Engine(CNN, delegate=refusing)
    with pytest.raises(DelegateError, match="library is not set"):
        Engine(CNN, delegate=DelegateSpec(kind="external"))


def test_bad_model_files_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"junk\.tflite"):
        Engine(junk)
    with pytest.raises(ModelLoadError, match="cannot read model file"):
        Engine(tmp_path / "absent.tflite")


def test_manifest_mismatch_names_every_difference() -> None:
    manifest = load_manifest(DATA / "digits_cnn.json")
    wrong = manifest.model_copy(update={
        "input": manifest.input.model_copy(update={"shape": [1, 32, 32, 1]}),
        "labels": [str(i) for i in range(10)]})
    with pytest.raises(ModelMismatchError, match=r"input shape \[1, 28, 28, 1\] != manifest"):
        Engine(CNN).check_manifest(wrong)
