"""The ONNX Runtime layer: providers, threads, the manifest and its integrity checks, the session cache.

Graphs here are built with onnx.helper (no torch), so this file stays fast; the torch-exported conv nets
are exercised end to end in test_tiling.py.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from quietlens.engine import runtime
from quietlens.engine.errors import ModelError, QuietLensError

PACKAGED = Path(__file__).resolve().parents[1] / "assets" / "models" / "manifest.json"


def affine_model(scale: float, offset: float = 0.0) -> bytes:
    """y = scale·x + offset on a dynamic (N, C, H, W) float tensor."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "c", "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    consts = [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]),
              helper.make_tensor("o", TensorProto.FLOAT, [], [offset])]
    nodes = [helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node("Add", ["t", "o"], ["y"])]
    graph = helper.make_graph(nodes, "affine", [x], [y], initializer=consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def two_input_model() -> bytes:
    a, b, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["k"]) for n in ("a", "b", "y"))
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add", [a, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


FIELDS = {"id": "photo-test", "method": "f2n", "modality": "photo", "receptive_field": 0, "tile_multiple": 1,
          "provenance": {"script": "tests/test_runtime.py", "seed": 0}}


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
def registered(tmp_path) -> runtime.ModelEntry:
    src = tmp_path / "trained.onnx"
    src.write_bytes(affine_model(2.0, 1.0))
    return runtime.register_user_model(src, FIELDS)


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


# -- manifest

def test_packaged_manifest_is_valid():
    doc = json.loads(PACKAGED.read_text())
    assert doc["schema"] == 1 and isinstance(doc["models"], list)
    assert runtime.packaged_manifest_path().resolve() == PACKAGED.resolve()
    entries = runtime.load_manifest(PACKAGED)
    for entry in entries.values():  # every shipped graph is present and intact
        assert hashlib.sha256(entry.path.read_bytes()).hexdigest() == entry.sha256


def test_default_manifest_without_user_models():
    assert runtime.load_manifest() == runtime.load_manifest(PACKAGED)


def test_user_data_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("QUIETLENS_DATA")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert runtime.user_data_dir() == tmp_path / "xdg" / "quietlens"


def test_register_then_load(registered, tmp_path):
    manifest = tmp_path / "data" / "models" / "manifest.json"
    assert runtime.user_manifest_path() == manifest
    assert registered.path == manifest.parent / "photo-test.onnx"
    assert registered.sha256 == hashlib.sha256(affine_model(2.0, 1.0)).hexdigest()
    assert registered.inputs == [{"name": "x", "shape": ["n", "c", "h", "w"], "range": None}]
    assert runtime.load_manifest()["photo-test"] == registered
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["manifest.json", "photo-test.onnx"]

    sess = runtime.session("photo-test")
    assert (sess.provider, sess.input_names, sess.output_names) == ("cpu", ["x"], ["y"])
    x = np.arange(6, dtype=np.float64).reshape(1, 1, 2, 3)  # cast to float32 on the way in
    np.testing.assert_array_equal(sess(x), (2 * x + 1).astype(np.float32))


def test_register_again_replaces(registered, tmp_path):
    src = tmp_path / "retrained.onnx"
    src.write_bytes(affine_model(5.0))
    entry = runtime.register_user_model(src, {**FIELDS, "provenance": {"seed": 1}})
    doc = json.loads(runtime.user_manifest_path().read_text())
    assert [m["id"] for m in doc["models"]] == ["photo-test"]
    assert entry.sha256 != registered.sha256 and entry.provenance == {"seed": 1}
    assert runtime.session("photo-test")(np.ones((1, 1, 1, 1)))[0, 0, 0, 0] == 5.0


def test_register_rejects_bad_input(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a graph")
    with pytest.raises(ModelError, match="garbage.onnx.*not a valid ONNX model"):
        runtime.register_user_model(garbage, FIELDS)
    good = tmp_path / "good.onnx"
    good.write_bytes(affine_model(1.0))
    with pytest.raises(QuietLensError, match="model id"):
        runtime.register_user_model(good, {**FIELDS, "id": "../escape"})
    with pytest.raises(ModelError, match="lacks modality"):
        runtime.register_user_model(good, {k: v for k, v in FIELDS.items() if k != "modality"})
    assert not runtime.user_manifest_path().exists()


def test_tampered_model_fails_integrity_check(registered):
    data = bytearray(registered.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    registered.path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"failed its integrity check \(expected sha256 [0-9a-f]{64}, got "
                                         r"[0-9a-f]{64}\); reinstall or retrain"):
        runtime.session("photo-test")


def test_truncated_model(registered, tmp_path):
    data = registered.path.read_bytes()
    registered.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="integrity check"):
        runtime.session("photo-test")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated.onnx: not a valid ONNX model"):
        runtime.session(truncated)
    with pytest.raises(ModelError, match="in-memory model is not a valid ONNX model"):
        runtime.session(data[:-7])


def test_missing_model_file(registered):
    registered.path.unlink()
    with pytest.raises(ModelError, match="photo-test.onnx: the model file is missing.*retrain"):
        runtime.session("photo-test")
    with pytest.raises(ModelError, match="missing"):
        runtime.session(registered.path)


def test_unknown_id_lists_known_ones(registered):
    with pytest.raises(ModelError, match=r"unknown model 'nope' \(known models: [^)]*\bphoto-test\b"):
        runtime.session("nope")


def test_broken_manifests(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(ModelError, match="manifest cannot be read"):
        runtime.load_manifest(path)
    path.write_text(json.dumps({"schema": 2, "models": []}))
    with pytest.raises(ModelError, match="schema 2"):
        runtime.load_manifest(path)
    entry = {"id": "a", "file": "a.onnx", "sha256": "0" * 64, "method": "m", "modality": "ct"}
    path.write_text(json.dumps({"schema": 1, "models": [entry, entry]}))
    with pytest.raises(ModelError, match="'a' appears twice"):
        runtime.load_manifest(path)


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
