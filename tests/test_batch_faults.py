"""The batch under faults, on real files: kills, full or read-only disks, hostile and vanishing inputs,
hangs and crashes (per-file timeout), tampered models, provenance in the report and in the outputs."""
from __future__ import annotations

import ast
import errno
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile

from quietlens.engine import __version__, batch, catalogue, io, methods, runtime
from quietlens.engine.errors import ModelError, OutputError, UnsupportedFormatError
from quietlens.engine.io import photo

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "quietlens.engine.cli"]


def snapshot(root: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if io.PARTIAL_NAME.match(p.name)]


def report(out: Path) -> dict:
    return json.loads((out / batch.REPORT_NAME).read_text())


def by_name(rep: dict) -> dict[str, dict]:
    return {Path(f["input"]).name: f for f in rep["files"]}


@pytest.fixture
def mixed_tree(tmp_path, srgb_pairs, raw_files, mr_series_dir, pydicom_ct) -> Path:
    """Real photos (one 1-pixel, odd names), a RAW, a CT slice, an MR series and a NIfTI made from it."""
    src = tmp_path / "in"
    (src / "photos" / "sub dir").mkdir(parents=True)
    shutil.copy(srgb_pairs[0][0], src / "photos" / "a.png")
    shutil.copy(srgb_pairs[1][0], src / "photos" / "sub dir" / "ünïcode name.png")
    io.save(io.load(srgb_pairs[2][0]).with_data(io.load(srgb_pairs[2][0]).data[:1, :1]), src / "photos" / "one.png")
    shutil.copy(next(p for p in raw_files if p.suffix == ".KDC"), src / "camera.KDC")
    (src / "ct").mkdir()
    shutil.copy(pydicom_ct, src / "ct" / "with space.dcm")
    shutil.copytree(mr_series_dir, src / "mr" / "series1")
    (src / "volumes").mkdir()
    io.save(io.load(mr_series_dir), src / "volumes" / "mr.nii.gz")
    return src


def test_report_and_outputs_carry_provenance(mixed_tree, tmp_path):
    out = tmp_path / "out"
    results = batch.run_batch(mixed_tree, out, "passthrough", {"strength": "0.5"})
    assert {r.status for r in results} == {"done"}, [r.error for r in results]
    rep = report(out)
    assert rep["counts"] == {"done": 7, "skipped": 0, "failed": 0, "cancelled": 0}
    for entry in rep["files"]:
        assert set(entry) == {"input", "output", "status", "method", "params", "model_sha256", "provider",
                              "seconds", "error", "warnings"}
        assert entry["method"] == "passthrough" and entry["params"] == {"strength": 0.5}
        assert entry["provider"] == "cpu" and entry["model_sha256"] is None and entry["seconds"] > 0
        assert Path(entry["output"]).exists()
    assert io.load(out / "photos" / "one.png").data.shape == (1, 1, 3)

    ct = pydicom.dcmread(out / "ct" / "with space.dcm")
    assert f"QuietLens {__version__}" in ct.DerivationDescription and "method passthrough" in ct.DerivationDescription
    equipment = ct.ContributingEquipmentSequence[-1]
    assert (equipment.Manufacturer, equipment.SoftwareVersions) == ("QuietLens", __version__)
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109103"
    series = [pydicom.dcmread(p) for p in sorted((out / "mr" / "series1").glob("*.dcm"))]
    assert len(series) == 40 and all("passthrough (strength=0.5)" in ds.DerivationDescription for ds in series)

    nifti = nib.load(out / "volumes" / "mr.nii.gz")
    assert nifti.header["descrip"].item().decode().startswith(f"QuietLens {__version__} passthrough")
    record = json.loads(nifti.header.extensions[-1].get_content())
    assert record["provenance"]["method"] == "passthrough" and record["provenance"]["params"] == {"strength": 0.5}
    volume = Path("volumes") / "mr.nii.gz"
    np.testing.assert_array_equal(io.load(out / volume).data, io.load(mixed_tree / volume).data)


def test_inputs_are_read_only_and_never_modified(mixed_tree, tmp_path, as_ordinary_user):
    """Every input file and folder is made read-only and permissions are enforced: any open for writing
    would fail the batch. Bytes and modification times stay the same."""
    for p in mixed_tree.rglob("*"):
        p.chmod(0o555 if p.is_dir() else 0o444)
    mixed_tree.chmod(0o555)
    before = snapshot(mixed_tree)
    try:
        run = subprocess.run([*as_ordinary_user, *CLI, "batch", str(mixed_tree), "-o", str(tmp_path / "out"),
                              "--method", "passthrough", "-q"], capture_output=True, text=True)
    finally:
        for p in [mixed_tree, *mixed_tree.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert run.returncode == 0, run.stderr
    assert report(tmp_path / "out")["counts"]["done"] == 7
    assert snapshot(mixed_tree) == before


def test_hostile_and_vanishing_inputs_fail_alone(srgb_pairs, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    photo = io.load(srgb_pairs[0][0])
    for name in ("a.png", "b.png", "vanishes.png", "z.png"):
        shutil.copy(srgb_pairs[0][0], src / name)
    (src / "empty.jpg").write_bytes(b"")
    os.symlink("loop.png", src / "loop.png")  # a symlink to itself
    os.symlink("nowhere.png", src / "dangling.png")
    os.symlink(".", src / "again")  # a folder loop: must not be walked forever
    nan = photo.data[:32, :32].copy()
    nan[3, 4, 1] = np.nan
    tifffile.imwrite(src / "nan.tif", nan, photometric="rgb")

    def vanish_after_first(k, n, result):
        if result.status == "done":  # listed and planned, then gone before its turn
            (src / "vanishes.png").unlink(missing_ok=True)

    results = batch.run_batch(src, out, "passthrough", on_file=vanish_after_first)
    status = {Path(r.input).name: (r.status, r.error) for r in results}
    assert set(status) == {"a.png", "b.png", "vanishes.png", "z.png", "empty.jpg", "loop.png", "dangling.png",
                           "nan.tif"}
    assert all(status[n][0] == "done" for n in ("a.png", "b.png", "z.png"))
    assert "empty" in status["empty.jpg"][1]
    assert "no such file" in status["loop.png"][1] and "no such file" in status["dangling.png"][1]
    assert "no such file" in status["vanishes.png"][1]
    assert status["nan.tif"][0] == "failed" and "NaN" in status["nan.tif"][1]
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")) == [
        "a.png", "b.png", batch.REPORT_NAME, "z.png"]


def test_stale_partial_files_are_cleaned_and_never_counted(srgb_pairs, mr_series_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(srgb_pairs[0][0], src / "a.png")
    shutil.copytree(mr_series_dir, src / "series1")
    out.mkdir()
    # What a run killed mid-write leaves: a half file, a half series folder, a half report.
    io.files.temp_path(out / "a.png").write_bytes(srgb_pairs[0][0].read_bytes()[:1000])
    half_series = io.files.temp_path(out / "series1")
    half_series.mkdir()
    (half_series / "IM00001.dcm").write_bytes(b"\0" * 10)
    io.files.temp_path(out / batch.REPORT_NAME).write_text("{")
    assert len(partial_files(out)) == 3
    keep = out / ".notes-not-ours.txt"
    keep.write_text("user file")
    batch.run_batch(src, out, "passthrough")
    assert report(out)["counts"] == {"done": 2, "skipped": 0, "failed": 0, "cancelled": 0}
    assert not partial_files(out) and keep.exists()
    np.testing.assert_array_equal(io.load(out / "a.png").data, io.load(src / "a.png").data)


def test_killed_batch_resumes_without_corrupt_output(srgb_pairs, mr_series_dir, tmp_path):
    """SIGKILL the CLI at random points; rerunning the same command finishes with every output whole."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(24):
        shutil.copy(srgb_pairs[i % len(srgb_pairs)][0], src / f"photo {i:02d}.png")
    shutil.copytree(mr_series_dir, src / "series1")
    command = [*CLI, "batch", str(src), "-o", str(out), "--method", "passthrough", "-q"]
    rng = random.Random(7)
    for _ in range(3):
        before = set(out.rglob("*"))
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not set(out.rglob("*")) - before:
            time.sleep(0.01)  # until this run writes something (temporary names are new each time)
        time.sleep(rng.uniform(0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert subprocess.run(command, capture_output=True).returncode == 0
    rep = report(out)
    assert rep["counts"]["failed"] == rep["counts"]["cancelled"] == 0
    assert rep["counts"]["done"] + rep["counts"]["skipped"] == 25
    assert rep["counts"]["skipped"] > 0, "the kills should have left finished outputs to skip"
    assert not partial_files(out)
    for name in (f"photo {i:02d}.png" for i in range(24)):
        np.testing.assert_array_equal(io.load(out / name).data, io.load(src / name).data)
    np.testing.assert_array_equal(io.load(out / "series1").data, io.load(mr_series_dir).data)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_disk_stops_and_keeps_what_was_written(srgb_pairs, tmp_path, monkeypatch, code):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(6):
        shutil.copy(srgb_pairs[i % len(srgb_pairs)][0], src / f"p{i}.png")
    real_write, calls = photo.write, []

    def write_until_full(image, path):
        calls.append(path)
        if len(calls) <= 2:
            return real_write(image, path)
        Path(path).write_bytes(b"\x89PNG half")  # the device fills up part way through
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(photo, "write", write_until_full)
    with pytest.raises(OutputError, match=f"{os.strerror(code)}.*run the same command again"):
        batch.run_batch(src, out, "passthrough")
    assert len(calls) == 3, "the batch stops at the first full-disk error instead of trying every file"
    rep = report(out)
    assert rep["counts"] == {"done": 2, "skipped": 0, "failed": 1, "cancelled": 3}
    assert all(f["error"].startswith("not started:") for f in rep["files"] if f["status"] == "cancelled")
    assert not partial_files(out)
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["p0.png", "p1.png"]
    for name in written:
        np.testing.assert_array_equal(io.load(out / name).data, io.load(src / name).data)

    monkeypatch.setattr(photo, "write", real_write)  # space freed: the same command finishes
    batch.run_batch(src, out, "passthrough")
    assert report(out)["counts"] == {"done": 4, "skipped": 2, "failed": 0, "cancelled": 0}


def test_full_disk_stops_the_cli_with_one_clear_line(srgb_pairs, tmp_path, monkeypatch, capsys):
    from quietlens.engine.cli import main

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(srgb_pairs[0][0], src / "a.png")

    def full(image, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(photo, "write", full)
    assert main(["batch", str(src), "-o", str(tmp_path / "out"), "--method", "passthrough", "-q"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_another_batch_on_the_same_output_is_refused(srgb_pairs, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    shutil.copy(srgb_pairs[0][0], src / "a.png")
    with open(out / batch.LOCK_NAME, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another batch"):
            batch.run_batch(src, out, "passthrough")
    assert not (out / "a.png").exists()


# -- per-file timeout: a helper process per batch, killed when a file hangs or crashes it

# Loaded by every interpreter started with this folder on PYTHONPATH (the helper is its own process, so
# a monkeypatch here cannot reach it): files named "hang" never finish loading, "crash" kills the process.
SITECUSTOMIZE = '''
import os, signal, time
import quietlens.engine.io as io
_load = io.load
def load(path):
    name = os.path.basename(str(path))
    if name.startswith("hang"):
        time.sleep(3600)
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _load(path)
io.load = load
'''


@pytest.fixture
def faulty_helpers(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", str(site))


def test_timeout_stops_a_hanging_file_and_survives_a_crash(srgb_pairs, tmp_path, faulty_helpers):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a.png", "crash.png", "hang.png", "z.png"):
        shutil.copy(srgb_pairs[0][0], src / name)
    t0 = time.monotonic()
    results = batch.run_batch(src, out, "passthrough", timeout=3)
    status = {Path(r.input).name: (r.status, r.error) for r in results}
    assert status["a.png"] == ("done", "") and status["z.png"] == ("done", "")
    assert status["hang.png"][0] == "failed" and "3 s timeout" in status["hang.png"][1]
    assert status["crash.png"][0] == "failed" and "helper process died" in status["crash.png"][1]
    assert time.monotonic() - t0 < 30
    np.testing.assert_array_equal(io.load(out / "z.png").data, io.load(src / "z.png").data)
    assert not partial_files(out)
    assert report(out)["files"][0]["provider"] == "cpu"  # results cross the process boundary whole


def test_timeout_must_be_positive(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(Exception, match="positive number of seconds"):
        batch.run_batch(tmp_path / "in", tmp_path / "out", "passthrough", timeout=0)


# -- absurd declared sizes are refused before anything is allocated

def png_claiming(source: bytes, width: int, height: int) -> bytes:
    ihdr = source[12:16] + struct.pack(">II", width, height) + source[24:29]
    return source[:8] + source[8:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + source[33:]


def test_declared_sizes_beyond_the_limit_are_refused_fast(srgb_pairs, pydicom_ct, mr_series_dir, tmp_path):
    png = srgb_pairs[0][0].read_bytes()
    (tmp_path / "huge.png").write_bytes(png_claiming(png, 100_000, 100_000))
    photo = io.load(srgb_pairs[0][0])
    tifffile.imwrite(tmp_path / "small.tif", (photo.data[:8, :8] * 255).astype(np.uint8))
    tif = bytearray((tmp_path / "small.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "small.tif") as t:  # rewrite ImageWidth/ImageLength in place
        for code in (256, 257):
            tag = t.pages.first.tags[code]
            fmt = "<I" if tag.dtype == 4 else "<H"
            struct.pack_into(fmt, tif, tag.valueoffset, 60_000)
    (tmp_path / "huge.tif").write_bytes(bytes(tif))
    ds = pydicom.dcmread(pydicom_ct)
    ds.NumberOfFrames, ds.Rows, ds.Columns = 1000, 65535, 65535  # pixel data stays 128×128
    ds.save_as(tmp_path / "huge.dcm")
    volume = nib.load(io.save(io.load(mr_series_dir), tmp_path / "mr.nii"))
    header = volume.header.copy()
    header.set_data_shape((30000, 30000, 40))
    raw_nii = bytearray((tmp_path / "mr.nii").read_bytes())
    raw_nii[:348] = header.binaryblock
    (tmp_path / "huge.nii").write_bytes(bytes(raw_nii))

    for name in ("huge.png", "huge.tif", "huge.dcm", "huge.nii"):
        t0 = time.perf_counter()
        with pytest.raises(UnsupportedFormatError, match="more than the limit"):
            io.load(tmp_path / name)
        assert time.perf_counter() - t0 < 2, name


def test_pixel_limit_is_configurable(srgb_pairs, monkeypatch):
    assert io.load(srgb_pairs[0][0]).data.size > 0
    monkeypatch.setenv("QUIETLENS_MAX_PIXELS", "1000")
    with pytest.raises(UnsupportedFormatError, match="QUIETLENS_MAX_PIXELS"):
        io.load(srgb_pairs[0][0])


# -- models: the sha256 of the graph a method ran reaches the report; a tampered graph is refused

class IdentityModel(methods.Method):
    """A test method that runs a registered ONNX graph, to follow a model through the batch."""

    name, title, summary = "onnx-identity", "ONNX identity", "runs the registered identity graph"
    kinds, params, user_facing = ("ct",), (methods.STRENGTH,), False

    def prepare(self, image, progress, cancel, provider="auto"):
        session = runtime.session("identity-test", provider)
        return SimpleNamespace(session=session, model_sha256=catalogue.load()["identity-test"].sha256)

    def run(self, image, state, params, regions, progress, cancel):
        return image.with_data(state.session(image.data[None, None])[0, 0])

    def model_sha256(self, state):
        return state.model_sha256


@pytest.fixture
def identity_model(tmp_path, monkeypatch) -> catalogue.ModelEntry:
    from onnx import TensorProto, helper

    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "data"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "c", "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "identity.onnx").write_bytes(model.SerializeToString())
    monkeypatch.setitem(methods._REGISTRY, IdentityModel.name, IdentityModel())
    return catalogue.register_user_model(tmp_path / "identity.onnx", {"id": "identity-test", "method": "test",
                                                                     "modality": "ct"})


def test_model_hash_reaches_report_and_tampered_model_is_refused(identity_model, pydicom_ct, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_ct, src / "ct.dcm")
    batch.run_batch(src, tmp_path / "out1", IdentityModel.name)
    entry = report(tmp_path / "out1")["files"][0]
    assert entry["status"] == "done" and entry["model_sha256"] == identity_model.sha256
    assert identity_model.sha256 in pydicom.dcmread(tmp_path / "out1" / "ct.dcm").DerivationDescription

    for damage in (lambda b: b[:-7], lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:]):  # truncated, one bit
        identity_model.path.write_bytes(damage(identity_model.path.read_bytes()))
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        results = batch.run_batch(src, out, IdentityModel.name)
        assert results[0].status == "failed" and "failed its integrity check" in results[0].error
        assert not (out / "ct.dcm").exists()
    with pytest.raises(ModelError, match="integrity"):
        runtime.session("identity-test")


def test_no_untrusted_pickle_loading_in_the_source():
    """Model and data files come from users: torch.load only with weights_only=True, no pickle.load,
    no np.load(..., allow_pickle=True) anywhere in the shipped code."""
    offences = []
    for path in sorted(p for folder in ("engine", "app", "models") for p in (REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            weights_only, allow_pickle = keywords.get("weights_only"), keywords.get("allow_pickle")
            safe_torch = isinstance(weights_only, ast.Constant) and weights_only.value is True
            if name.endswith("torch.load") and not safe_torch:
                offences.append(f"{path}:{node.lineno} {name} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "cPickle.load", "joblib.load", "dill.load", "cloudpickle.load"):
                offences.append(f"{path}:{node.lineno} {name}")
            if name in ("np.load", "numpy.load") and not (allow_pickle is None or (
                    isinstance(allow_pickle, ast.Constant) and allow_pickle.value is False)):
                offences.append(f"{path}:{node.lineno} {name} with allow_pickle")
    assert not offences, "\n".join(offences)
