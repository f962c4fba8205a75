"""The ONNX Runtime layer: providers, threads, the session cache.

Graphs here are built with onnx.helper (no torch), so this file stays fast; the torch-exported conv nets
are exercised end to end in test_tiling.py.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from quietlens.engine import catalogue, runtime
from quietlens.engine.errors import ModelError, QuietLensError

from graphs import affine_model, register_affine, two_input_model

@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """A private user data dir and no provider/thread settings leaking in from the environment."""
    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "data"))
    for name in ("QUIETLENS_PROVIDER", "QUIETLENS_THREADS"):
        monkeypatch.delenv(name, raising=False)
    runtime.set_threads(None)
    yield
    runtime.set_threads(None)


@pytest.fixture
def registered(tmp_path) -> catalogue.ModelEntry:
    return register_affine(tmp_path)


# -- providers and threads

def test_cpu_only_machine():
    assert runtime.available_providers() == ["cpu"]
    assert runtime.resolve_provider() == "cpu"
    assert runtime.resolve_provider("CPU") == "cpu"


def test_cuda_request_explains_how_to_get_it():
    with pytest.raises(QuietLensError, match="onnxruntime-gpu.*README"):
        runtime.resolve_provider("cuda")
    with pytest.raises(QuietLensError, match="onnxruntime-gpu"):
        runtime.session(affine_model(1.0), "cuda")


def test_listed_but_broken_cuda_is_not_offered(monkeypatch):
    """onnxruntime-gpu lists CUDA even without a driver; the probe must see through that, not crash."""
    listed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    runtime._cuda_usable.cache_clear()
    try:
        assert runtime.available_providers() == ["cpu"]
        assert runtime.resolve_provider("auto") == "cpu"
        with pytest.raises(QuietLensError, match="could not start on the GPU"):
            runtime.resolve_provider("cuda")
    finally:
        runtime._cuda_usable.cache_clear()


def test_provider_env(monkeypatch):
    monkeypatch.setenv("QUIETLENS_PROVIDER", "cpu")
    assert runtime.resolve_provider() == "cpu"
    monkeypatch.setenv("QUIETLENS_PROVIDER", "cuda")
    with pytest.raises(QuietLensError, match="onnxruntime-gpu"):
        runtime.resolve_provider()
    assert runtime.resolve_provider("cpu") == "cpu"  # an explicit choice wins over the variable
    monkeypatch.setenv("QUIETLENS_PROVIDER", "tpu")
    with pytest.raises(QuietLensError, match="unknown provider 'tpu'"):
        runtime.resolve_provider()


def test_threads(monkeypatch):
    model = affine_model(3.0)
    default = runtime.session(model)
    runtime.set_threads(1)
    assert runtime.session(model) is not default
    assert runtime.describe()["threads"] == 1
    runtime.set_threads(None)
    assert runtime.session(model) is default
    monkeypatch.setenv("QUIETLENS_THREADS", "2")
    assert runtime.describe()["threads"] == 2
    monkeypatch.setenv("QUIETLENS_THREADS", "many")
    with pytest.raises(QuietLensError, match="QUIETLENS_THREADS"):
        runtime.session(model)
    with pytest.raises(QuietLensError, match="positive integer"):
        runtime.set_threads(0)


def test_describe_is_json():
    facts = runtime.describe()
    assert facts["onnxruntime"] == ort.__version__
    assert facts["available_providers"] == ["cpu"] and facts["provider"] == "cpu"
    json.dumps(facts)


def test_describe_survives_a_bad_provider_variable(monkeypatch):
    monkeypatch.setenv("QUIETLENS_PROVIDER", "cuda")
    facts = runtime.describe()
    assert facts["provider"] is None and "onnxruntime-gpu" in facts["provider_error"]


# -- sessions

def test_session_cache(registered):
    by_id = runtime.session("photo-test")
    assert runtime.session("photo-test") is by_id
    assert runtime.session(registered.path) is by_id  # same bytes, same session
    assert runtime.session(registered.path.read_bytes()) is by_id


def test_session_cache_is_bounded():
    first = runtime.session(affine_model(10.0))
    for k in range(runtime._CACHE_SIZE):
        runtime.session(affine_model(11.0 + k))
    assert runtime.session(affine_model(10.0)) is not first


def test_run_with_several_inputs():
    sess = runtime.session(two_input_model())
    (y,) = sess.run({"a": [1, 2], "b": np.array([3.5, 4.5])})
    np.testing.assert_array_equal(y, np.array([4.5, 6.5], np.float32))
    with pytest.raises(TypeError, match="use run"):
        sess(np.zeros(2))
    with pytest.raises(QuietLensError, match="takes inputs a, b; got a"):
        sess.run({"a": np.zeros(2)})
    with pytest.raises(ModelError, match="failed on a"):
        sess.run({"a": np.zeros(2), "b": np.zeros(3)})
