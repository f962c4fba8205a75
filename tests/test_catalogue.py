"""The model catalogue: the shipped and user manifests, their validation, registration and integrity checks.

Graphs are built with onnx.helper (no torch), so this file stays fast.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from quietlens.engine import catalogue, runtime
from quietlens.engine.errors import ModelError, QuietLensError

from graphs import FIELDS, affine_model, register_affine

PACKAGED = Path(__file__).resolve().parents[1] / "assets" / "models" / "manifest.json"


@pytest.fixture(autouse=True)
def user_data(monkeypatch, tmp_path):
    """A private user data dir: registered test models never touch the real one."""
    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "data"))


@pytest.fixture
def registered(tmp_path) -> catalogue.ModelEntry:
    return register_affine(tmp_path)


def test_packaged_manifest_is_valid():
    doc = json.loads(PACKAGED.read_text())
    assert doc["schema"] == 1 and isinstance(doc["models"], list)
    assert catalogue.packaged_manifest_path().resolve() == PACKAGED.resolve()
    entries = catalogue.load(PACKAGED)
    for entry in entries.values():  # every shipped graph is present and intact
        assert hashlib.sha256(entry.path.read_bytes()).hexdigest() == entry.sha256


def test_default_manifest_without_user_models():
    assert catalogue.load() == catalogue.load(PACKAGED)


def test_user_data_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("QUIETLENS_DATA")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert catalogue.user_data_dir() == tmp_path / "xdg" / "quietlens"


def test_register_then_load(registered, tmp_path):
    manifest = tmp_path / "data" / "models" / "manifest.json"
    assert catalogue.user_manifest_path() == manifest
    assert registered.path == manifest.parent / "photo-test.onnx"
    assert registered.sha256 == hashlib.sha256(affine_model(2.0, 1.0)).hexdigest()
    assert registered.inputs == [{"name": "x", "shape": ["n", "c", "h", "w"], "range": None}]
    assert catalogue.load()["photo-test"] == registered
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["manifest.json", "photo-test.onnx"]

    sess = runtime.session("photo-test")
    assert (sess.provider, sess.input_names, sess.output_names) == ("cpu", ["x"], ["y"])
    x = np.arange(6, dtype=np.float64).reshape(1, 1, 2, 3)  # cast to float32 on the way in
    np.testing.assert_array_equal(sess(x), (2 * x + 1).astype(np.float32))


def test_register_again_replaces(registered, tmp_path):
    src = tmp_path / "retrained.onnx"
    src.write_bytes(affine_model(5.0))
    entry = catalogue.register_user_model(src, {**FIELDS, "provenance": {"seed": 1}})
    doc = json.loads(catalogue.user_manifest_path().read_text())
    assert [m["id"] for m in doc["models"]] == ["photo-test"]
    assert entry.sha256 != registered.sha256 and entry.provenance == {"seed": 1}
    assert runtime.session("photo-test")(np.ones((1, 1, 1, 1)))[0, 0, 0, 0] == 5.0


def test_register_rejects_bad_input(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a graph")
    with pytest.raises(ModelError, match="garbage.onnx.*not a valid ONNX model"):
        catalogue.register_user_model(garbage, FIELDS)
    good = tmp_path / "good.onnx"
    good.write_bytes(affine_model(1.0))
    with pytest.raises(QuietLensError, match="model id"):
        catalogue.register_user_model(good, {**FIELDS, "id": "../escape"})
    with pytest.raises(ModelError, match="lacks modality"):
        catalogue.register_user_model(good, {k: v for k, v in FIELDS.items() if k != "modality"})
    assert not catalogue.user_manifest_path().exists()


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
        catalogue.load(path)
    path.write_text(json.dumps({"schema": 2, "models": []}))
    with pytest.raises(ModelError, match="schema 2"):
        catalogue.load(path)
    entry = {"id": "a", "file": "a.onnx", "sha256": "0" * 64, "method": "m", "modality": "ct"}
    path.write_text(json.dumps({"schema": 1, "models": [entry, entry]}))
    with pytest.raises(ModelError, match="'a' appears twice"):
        catalogue.load(path)


# -- a broken user manifest never takes the shipped models down

def _write_user_manifest(models) -> Path:
    path = catalogue.user_manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": 1, "models": models}))
    return path


GOOD = {"id": "mine", "file": "mine.onnx", "sha256": "a" * 64, "method": "cbsn", "modality": "photo"}


@pytest.mark.parametrize("broken, why", [
    ({**GOOD, "sha256": 12345}, "sha256 must be 64 hexadecimal digits"),
    ({**GOOD, "sha256": None}, "sha256 must be 64 hexadecimal digits"),
    ({**GOOD, "file": 7}, "file must be a file name"),
    ({**GOOD, "file": "../x.onnx"}, "file must be a file name in the manifest's folder"),
    ({**GOOD, "file": "/etc/passwd"}, "file must be a file name in the manifest's folder"),
    ({**GOOD, "receptive_field": "wide"}, "receptive_field must be a whole number"),
    ({**GOOD, "tile_multiple": 0}, "tile_multiple must be a whole number ≥ 1"),
    ({**GOOD, "provenance": []}, "provenance must be an object"),
    ("cbsn", "must be an object, found str"),
    ({k: v for k, v in GOOD.items() if k != "method"}, "lacks method"),
])
def test_broken_user_entry_is_reported_and_the_rest_still_loads(broken, why):
    _write_user_manifest([broken, {**GOOD, "id": "fine"}])
    entries = catalogue.load()
    assert set(catalogue.load(PACKAGED)) <= set(entries)  # every shipped model still there
    assert "fine" in entries and "mine" not in entries
    problems = catalogue.problems()
    assert len(problems) == 1 and why in problems[0] and "entry ignored" in problems[0]
    with pytest.raises(ModelError, match=why.split(" must")[0]):  # strict reading names the field too
        catalogue.load(catalogue.user_manifest_path())


@pytest.mark.parametrize("text", ["{not json", json.dumps({"schema": 1, "models": "none"}), json.dumps([1, 2]),
                                  json.dumps({"schema": 9, "models": []})])
def test_unreadable_user_manifest_keeps_the_shipped_models(text):
    path = catalogue.user_manifest_path()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert catalogue.load() == catalogue.load(PACKAGED)
    assert len(catalogue.problems()) == 1 and "its models are ignored" in catalogue.problems()[0]
    sess = runtime.session("f2n-filter-r3")  # a shipped model runs
    assert sess.input_names == ["image", "sigma1", "sigma2"]
    with pytest.raises(ModelError, match="user manifest has problems"):  # a missing user model says why
        catalogue.entry("mine")
    with pytest.raises(ModelError):  # registering never overwrites a manifest it cannot read
        register_affine(path.parent.parent)
    assert path.read_text() == text


def test_entry_outside_its_folder_is_never_read(tmp_path):
    secret = tmp_path / "data" / "secret.onnx"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(affine_model(1.0))
    _write_user_manifest([{**GOOD, "file": "../secret.onnx",
                           "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()}])
    with pytest.raises(ModelError, match="unknown model 'mine'.*file must be a file name"):
        runtime.session("mine")


def test_families_and_students():
    for model_id in ("mine", "mine.student"):
        catalogue.register_user_model(affine_model(1.0), {**FIELDS, "id": model_id, "method": "cbsn"})
    assert catalogue.families("cbsn") == ["cbsn", "mine"]  # the shipped family first
    assert catalogue.entry("mine.student").family == "mine" == catalogue.entry("mine").family
    assert catalogue.student_id("mine") == "mine.student"
    with pytest.raises(ModelError, match="made for cbsn, not sdap"):
        catalogue.entry("mine", "sdap")


def test_memory_per_pixel(registered):
    assert registered.memory_per_pixel(123.0) == 123.0  # not measured: the caller's conservative default
    entry = catalogue.register_user_model(affine_model(1.0), {**FIELDS, "bytes_per_pixel": 64})
    assert entry.memory_per_pixel(123.0) == 64.0
    for shipped in catalogue.load(PACKAGED).values():
        if shipped.method in ("cbsn", "sdap", "yond"):  # graphs whose tiles are sized by it
            assert shipped.bytes_per_pixel > 0, shipped.id


def test_methods_command_names_what_was_skipped(capsys):
    from quietlens.engine.cli import main

    _write_user_manifest([{**GOOD, "sha256": 5}])
    assert main(["methods"]) == 0
    out, err = capsys.readouterr()
    assert "cbsn" in out and "warning:" in err and "model entry 'mine': sha256 must be" in err
