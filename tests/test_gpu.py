"""``delegate.kind: gpu``: LiteRT's CompiledModel path, its fallback to XNNPACK where no GPU
adapter exists (as here), ``fallback: fail``, and what status and the log say."""

from __future__ import annotations

import numpy as np
import pytest

from agent.demo import write_digits_video
from agent.errors import DelegateError
from agent.inference.engine import DelegateSpec, Engine
from agent.inference.gpu import CompiledGpuModel
from bench.support.agent_proc import DATA, AgentProcess, agent_config
from bench.support.broker import Mosquitto
from bench.support.mqtt_client import Collector

pytestmark = pytest.mark.skipif(not (DATA / "digits_cnn.json").exists(),
                                reason="reference models not built (make models)")
MODEL = DATA / "digits_cnn.tflite"


def _inputs(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.random((1, 28, 28, 1), dtype=np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def gpu_engine() -> Engine:
    engine = Engine(MODEL, delegate=DelegateSpec("gpu"))
    if engine.info.delegate == "gpu":
        pytest.skip("this machine has a usable GPU: the fallback cannot be seen here")
    return engine


def test_no_adapter_falls_back_to_xnnpack_and_says_why(gpu_engine: Engine, caplog) -> None:  # type: ignore[no-untyped-def]
    info = gpu_engine.info.as_dict()
    assert info["delegate"] == "xnnpack"
    assert info["fallback_reason"].startswith("GPU: LiteRT could not compile the model")
    reference = Engine(MODEL)
    for x in _inputs():
        np.testing.assert_array_equal(gpu_engine.invoke(x), reference.invoke(x))


def test_fallback_fail_refuses_with_a_clear_error(gpu_engine: Engine) -> None:
    with pytest.raises(DelegateError, match=r"GPU: .*delegate.fallback is fail"):
        Engine(MODEL, delegate=DelegateSpec("gpu", fallback="fail"))


def test_unknown_gpu_option_is_an_error_whatever_the_fallback() -> None:
    with pytest.raises(DelegateError, match=r"'precision': not a GPU option; known: .*enforce_f32"):
        Engine(MODEL, delegate=DelegateSpec("gpu", options={"precision": "fp16"}))
    with pytest.raises(DelegateError, match="enforce_f32: 'maybe': expected true or false"):
        Engine(MODEL, delegate=DelegateSpec("gpu", options={"enforce_f32": "maybe"}))


def test_compiled_model_path_gives_the_interpreter_outputs() -> None:
    """The CompiledModel plumbing (buffers in, buffers out) on the accelerator every machine
    has; only the accelerator differs on a GPU."""
    compiled = CompiledGpuModel(MODEL.read_bytes(), accelerator="cpu")
    reference = Engine(MODEL)
    for x in _inputs():
        out = compiled.invoke(x)
        assert out.shape == (1, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference.invoke(x), rtol=1e-5, atol=1e-6)


def test_agent_with_gpu_delegate_runs_on_xnnpack_and_status_says_so(tmp_path, gpu_engine) -> None:  # type: ignore[no-untyped-def]
    broker = Mosquitto(tmp_path / "broker").start()
    video = tmp_path / "digits.avi"
    write_digits_video(video, fps=30)
    sources = [{"name": "cam", "type": "camera", "uri": str(video), "loop": True}]
    sub = Collector(broker.port, ["edge/#"])
    try:
        path = agent_config(tmp_path, broker.port, sources,
                            model={"delegate": {"kind": "gpu"}})
        agent = AgentProcess(path)
        try:
            sub.wait_topic("edge/dev1/labels", count=3, timeout=30)
            status = sub.wait_for(lambda ms: any(
                m.topic == "edge/dev1/status" and m.json().get("runtime") for m in ms),
                timeout=10, what="status")
            body = next(m.json() for m in reversed(status) if m.topic == "edge/dev1/status")
            assert body["delegate"] == "xnnpack"
            assert body["runtime"]["fallback_reason"].startswith("GPU:")
        finally:
            agent.terminate_timed()
        assert "falling back to CPU (XNNPACK)" in agent.log()
        refused = agent_config(tmp_path, broker.port, sources, device="dev2",
                               model={"delegate": {"kind": "gpu", "fallback": "fail"}})
        strict = AgentProcess(refused)
        assert strict.wait(30) == 1
        assert "cannot start" in strict.log() and "delegate.fallback is fail" in strict.log()
    finally:
        sub.close()
        broker.stop()
