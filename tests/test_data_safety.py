"""Data safety on real files, one test (or more) per case of the data-safety review: ``--overwrite`` never
deletes what QuietLens did not write, no kill loses an output, inputs are processed whole or refused, and
every hostile request ends in one clear line. ``tests/benchmarks/abuse.py`` tries these systematically."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image as PILImage

from quietlens.engine import batch, io, methods, regions
from quietlens.engine.cli import main
from quietlens.engine.errors import CorruptFileError, OutputError, QuietLensError, UnsupportedFormatError
from killhook import interrupt_batch, kill_env

CLI = [sys.executable, "-m", "quietlens.engine.cli"]


def cli(*argv, env: dict | None = None, prefix: list[str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), *CLI, *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def one_clean_line(stderr: str) -> bool:
    return "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def photo(srgb_pairs, tmp_path) -> Path:
    """A real noisy photo, cropped to 96² so that each run is quick."""
    path = tmp_path / "photo.png"
    image = io.load(srgb_pairs[0][0])
    io.save(image.with_data(image.data[:96, :96]), path)
    return path


@pytest.fixture
def series(mr_series_dir, tmp_path) -> Path:
    folder = tmp_path / "input" / "series1"
    shutil.copytree(mr_series_dir, folder)
    return folder


# -- 1. --overwrite replaces only a series folder QuietLens wrote, never the input or anything else

def test_overwrite_refuses_a_folder_quietlens_did_not_write(series, pydicom_ct, tmp_path, capsys):
    target = tmp_path / "records"
    target.mkdir()
    (target / "notes.txt").write_text("the only copy of my notes")
    shutil.copy(pydicom_ct, target / "other study.dcm")  # an unrelated DICOM, not written by QuietLens
    before = snapshot(target)
    assert main(["denoise", str(series), "-o", str(target), "--method", "passthrough", "--overwrite", "-q"]) == 2
    err = capsys.readouterr().err
    assert "did not write" in err and "notes.txt" in err and "other study.dcm" in err and one_clean_line(err)
    assert snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ["input", "records"]  # nothing left beside it either


def test_overwrite_never_touches_a_folder_holding_the_input(series, capsys):
    parent, before = series.parent, snapshot(series.parent)
    for target in (parent, series / "out"):  # the folder around the input, a folder inside it
        assert main(["denoise", str(series), "-o", str(target), "--method", "passthrough", "--overwrite",
                     "-q"]) == 2
        err = capsys.readouterr().err
        assert "input" in err and one_clean_line(err)
    assert snapshot(parent) == before


def test_overwrite_replaces_a_series_quietlens_wrote(series, tmp_path):
    out = tmp_path / "denoised"
    assert main(["denoise", str(series), "-o", str(out), "--method", "passthrough", "--param", "strength=0.5",
                 "-q"]) == 0
    assert "strength=0.5" in pydicom.dcmread(out / "IM00001.dcm").DerivationDescription
    assert main(["denoise", str(series), "-o", str(out), "--method", "passthrough", "--overwrite", "-q"]) == 0
    written = sorted(out.iterdir())
    assert len(written) == 40 and all("strength=1" in pydicom.dcmread(p).DerivationDescription for p in written)
    assert sorted(os.listdir(tmp_path)) == ["denoised", "input"]
    # One foreign file among ours is enough to refuse: it could be anything the user put there.
    (out / "report.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(OutputError, match="report.pdf"):
        io.save(io.load(series), out, overwrite=True)
    assert (out / "report.pdf").exists() and len(list(out.iterdir())) == 41


# -- 2. replacing a series is crash-safe; 4. a killed single denoise cleans its leftovers next time

@pytest.fixture
def kill_at(tmp_path):
    """``kill_at(point)``: the environment of a CLI process that SIGKILLs itself at that step of a write."""
    return lambda point: kill_env(tmp_path / "site", point)


def test_a_kill_while_replacing_a_series_loses_neither(series, tmp_path, kill_at):
    out = tmp_path / "out" / "denoised"
    out.parent.mkdir()
    command = ["denoise", series, "-o", out, "--method", "passthrough", "--param", "strength=0.5", "-q"]
    assert cli(*command).returncode == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}

    replace = ["denoise", series, "-o", out, "--method", "passthrough", "--overwrite", "-q"]
    killed = cli(*replace, env=kill_at("folder"))
    assert killed.returncode == -signal.SIGKILL
    survivors = {p.read_bytes() for p in out.parent.rglob("*") if p.is_file()}
    assert set(old.values()) <= survivors, "the old series must survive a kill in the middle of its replacement"

    io.clean_leftovers(out.parent)  # what the next write or batch does first: the old series comes back
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert os.listdir(out.parent) == ["denoised"]

    assert cli(*replace, env=kill_at("folder")).returncode == -signal.SIGKILL
    assert cli(*replace).returncode == 0  # the same command again settles the leftovers and finishes
    assert os.listdir(out.parent) == ["denoised"]
    assert all("strength=1" in pydicom.dcmread(p).DerivationDescription for p in out.iterdir())


def test_a_killed_denoise_cleans_its_own_leftovers_on_the_next_run(photo, tmp_path, kill_at):
    out = tmp_path / "out"
    out.mkdir()
    theirs = {".photo.png-0123abcd-part": b"a user's hidden file",  # looks like an old temporary name
              ".other.png.quietlens-0123abcd.part.png": b"another output's leftover"}
    for name, data in theirs.items():
        (out / name).write_bytes(data)
    command = ["denoise", photo, "-o", out / "photo.png", "--method", "passthrough", "-q"]
    for _ in range(2):
        assert cli(*command, env=kill_at("file")).returncode == -signal.SIGKILL
    left = set(os.listdir(out)) - set(theirs)  # the second run removed the first one's, then was killed
    assert len(left) == 1 and all(io.PARTIAL_NAME.match(n) for n in left)  # hidden, recognisably ours
    assert cli(*command).returncode == 0
    assert sorted(os.listdir(out)) == sorted([*theirs, "photo.png"])
    assert all((out / n).read_bytes() == d for n, d in theirs.items())
    np.testing.assert_array_equal(io.load(out / "photo.png").data, io.load(photo).data)


# -- 3. a batch cleans only its own temporaries, only in the output tree, never in an input

def test_batch_into_a_folder_around_its_input_cleans_nothing_of_the_input(photo, tmp_path):
    root = tmp_path / "work"
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(photo, src / "a.png")
    shutil.copy(photo, src / "sub" / "b.png")
    hidden = {src / ".a-0123abcd-part": b"user data", src / "sub" / ".b-89abcdef-part.png": b"user data 2",
              # even a name QuietLens makes is not cleaned inside an input: the input is never touched
              src / ".a.png.quietlens-0123abcd.part.png": b"from an earlier denoise into the input folder"}
    for path, data in hidden.items():
        path.write_bytes(data)
    before = snapshot(src)
    leftover = root / ".a.png.quietlens-0123abcd.part.png"  # a killed batch's leftover in the output tree
    leftover.write_bytes(b"half")
    assert io.PARTIAL_NAME.match(leftover.name)
    results = batch.run_batch(src, root, "passthrough")
    assert {Path(r.input).name: r.status for r in results} == {"a.png": "done", "b.png": "done"}
    assert snapshot(src) == before
    assert not leftover.exists()
    assert (root / "a.png").exists() and (root / "sub" / "b.png").exists()


def test_batch_never_writes_a_mirror_into_its_input(photo, tmp_path):
    """``batch work/in -o work`` maps ``in/in/x.png`` onto ``in/x.png``: inside the input, so it fails."""
    root = tmp_path / "work"
    (root / "in" / "in").mkdir(parents=True)
    shutil.copy(photo, root / "in" / "in" / "x.png")
    before = snapshot(root / "in")
    results = batch.run_batch(root / "in", root, "passthrough")
    assert [r.status for r in results] == ["failed"] and "inside the input" in results[0].error
    assert snapshot(root / "in") == before


# -- 5. several pages or frames: refused, never cut down to the first

def test_multi_page_and_animated_images_are_refused(photo, tmp_path):
    pixels = (io.load(photo).data * 255).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        tif.write(pixels, photometric="rgb")
        tif.write(pixels[::-1], photometric="rgb")
    frames = [PILImage.fromarray(pixels), PILImage.fromarray(pixels[::-1])]
    frames[0].save(tmp_path / "animated.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "animated.webp", save_all=True, append_images=frames[1:], lossless=True)
    for name, what in (("pages.tif", "2 pages"), ("animated.png", "2 frames"), ("animated.webp", "2 frames")):
        with pytest.raises(UnsupportedFormatError, match=what) as caught:
            io.load(tmp_path / name)
        assert name in str(caught.value)

    # A reduced-resolution page (a thumbnail) is a preview, not a second image: still one photo.
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:
        tif.write(pixels, photometric="rgb")
        tif.write(pixels[::4, ::4], photometric="rgb", subfiletype=1)
    np.testing.assert_array_equal(io.load(tmp_path / "thumb.tif").data, io.load(photo).data)


# -- 6. a series with an empty, damaged or missing slice: refused naming it, never written with a gap

@pytest.mark.parametrize("damage", ["empty", "not dicom"])
def test_series_with_a_bad_slice_in_the_middle_is_refused_naming_it(series, tmp_path, damage):
    bad = series / "0020.dcm"
    bad.write_bytes(b"" if damage == "empty" else b"scanner log, not an image\n" * 50)
    with pytest.raises(CorruptFileError) as caught:
        io.load(series)
    assert str(bad) in str(caught.value)
    assert main(["denoise", str(series), "-o", str(tmp_path / "out"), "--method", "passthrough", "-q"]) == 2
    assert not (tmp_path / "out").exists()


def test_series_with_a_missing_slice_is_never_given_even_spacing(series, tmp_path):
    (series / "0020.dcm").unlink()
    image = io.load(series)  # the slices that are there keep their own positions when written as DICOM
    assert image.data.shape[0] == 39
    with pytest.raises(UnsupportedFormatError, match="unevenly spaced.*slices 19 and 20"):
        io.save(image, tmp_path / "gap.nii.gz")
    assert not list(tmp_path.glob("gap*")) and not list(tmp_path.glob(".gap*"))
    io.save(image, tmp_path / "dicom")  # as DICOM each slice keeps its own position
    positions = [pydicom.dcmread(p).ImagePositionPatient[2] for p in sorted((tmp_path / "dicom").iterdir())]
    originals = sorted(pydicom.dcmread(p).ImagePositionPatient[2] for p in series.iterdir())
    assert sorted(positions) == originals


# -- 7. declared sizes are checked against the file and a byte budget before anything is read

def nifti_claiming(shape: tuple[int, ...], dtype, body: bytes) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4 + body


def test_a_small_file_declaring_gigabytes_is_refused_without_allocating(pydicom_ct, srgb_pairs, tmp_path):
    body = srgb_pairs[0][0].read_bytes()[:8000]  # real bytes where the voxels would be
    (tmp_path / "claims.nii").write_bytes(nifti_claiming((30000, 30000), np.float64, body))
    (tmp_path / "claims.nii.gz").write_bytes(gzip.compress(nifti_claiming((30000, 30000), np.float64, body)))
    ds = pydicom.dcmread(pydicom_ct)
    ds.Rows = ds.Columns = 30000  # 1.8 GB of pixels declared, 32 KB present
    ds.save_as(tmp_path / "claims.dcm")
    for name in ("claims.nii", "claims.nii.gz", "claims.dcm"):
        t0 = time.monotonic()
        # A small parent measures the child: a child forked from this large test process would count
        # this process's memory as its own peak.
        run = subprocess.run([sys.executable, "-c", PEAK_MEMORY, *CLI, "info", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - t0
        *out, peak = run.stdout.splitlines()
        code, kib = map(int, peak.split())
        assert code == 1 and "declares" in "\n".join(out), run.stdout  # more than the file holds, or the budget
        assert elapsed < 15, f"{name}: {elapsed:.1f} s"
        assert kib < 1_000_000, f"{name}: peak {kib / 1e6:.1f} GB"  # ~0.3 GB to start


PEAK_MEMORY = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
out = proc.stdout.read()
_, status, usage = os.wait4(proc.pid, 0)
print(out + f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def test_the_byte_budget_refuses_what_the_pixel_count_allows(mr_series_dir, tmp_path, monkeypatch):
    volume = io.save(io.load(mr_series_dir), tmp_path / "mr.nii")
    monkeypatch.setenv("QUIETLENS_MAX_BYTES", str(100_000))  # 40×64×64 float32 voxels need ~1.3 MB
    with pytest.raises(UnsupportedFormatError, match="QUIETLENS_MAX_BYTES"):
        io.load(volume)
    with pytest.raises(UnsupportedFormatError, match="QUIETLENS_MAX_BYTES"):
        io.load(mr_series_dir)


# -- 8. zero-length and complex NIfTI: refused, never an empty or silently real output

def test_zero_length_and_complex_nifti_are_refused(mr_series_dir, tmp_path, capsys):
    mr = io.load(mr_series_dir).data.transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(mr[:, :0, :], np.eye(4)), tmp_path / "empty.nii")
    nib.save(nib.Nifti1Image(mr.astype(np.complex64) * (1 + 1j), np.eye(4)), tmp_path / "complex.nii.gz")
    for name, error, match in (("empty.nii", CorruptFileError, "zero-length"),
                               ("complex.nii.gz", UnsupportedFormatError, "complex")):
        with pytest.raises(error, match=match):
            io.load(tmp_path / name)
        out = tmp_path / f"out-{name}"
        assert main(["denoise", str(tmp_path / name), "-o", str(out), "--method", "passthrough", "-q"]) == 2
        assert match in capsys.readouterr().err and not out.exists()


# -- 9. a folder the batch cannot read is a failure in the report, never skipped without a word

def test_unreadable_folder_fails_the_batch_and_is_reported(photo, tmp_path, as_ordinary_user):
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "locked").mkdir(parents=True)
    shutil.copy(photo, src / "a.png")
    shutil.copy(photo, src / "locked" / "b.png")
    (src / "locked").chmod(0o000)
    try:
        run = cli("batch", src, "-o", out, "--method", "passthrough", "-q", prefix=as_ordinary_user)
        info = cli("info", src, "--json", prefix=as_ordinary_user)
    finally:
        (src / "locked").chmod(0o755)
    assert run.returncode == 1, run.stderr
    files = {Path(f["input"]).name: f for f in json.loads((out / batch.REPORT_NAME).read_text())["files"]}
    assert files["a.png"]["status"] == "done"
    assert files["locked"]["status"] == "failed" and "cannot be read" in files["locked"]["error"]
    assert info.returncode == 1 and any("locked" in line and "cannot be read" in line
                                        for line in info.stdout.splitlines())


# -- 10. clean one-line errors: read-only destination, symlink loop, a closed pipe

def test_read_only_destination_needing_a_subfolder_is_one_line(photo, tmp_path, as_ordinary_user):
    src, locked = tmp_path / "in", tmp_path / "locked"
    src.mkdir()
    locked.mkdir()
    shutil.copy(photo, src / "a.png")
    locked.chmod(0o555)
    try:
        run = cli("batch", src, "-o", locked / "new" / "sub", "--method", "passthrough", "-q",
                  prefix=as_ordinary_user)
    finally:
        locked.chmod(0o755)
    assert run.returncode == 2 and "cannot be created" in run.stderr and one_clean_line(run.stderr), run.stderr
    assert not list(locked.iterdir())


def test_symlink_loop_input_is_one_line(tmp_path, capsys):
    os.symlink("loop.png", tmp_path / "loop.png")
    assert main(["denoise", str(tmp_path / "loop.png"), "-o", str(tmp_path / "out.png"), "--method",
                 "passthrough", "-q"]) == 2
    err = capsys.readouterr().err
    assert "loop.png" in err and one_clean_line(err)


def test_output_into_a_closed_pipe_ends_quietly(photo):
    proc = subprocess.Popen([*CLI, "info", "--json", str(photo)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # like `| head` that has already exited
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err and not err.strip()


# -- 12. region multipliers and worker counts are checked; Ctrl-C and SIGTERM keep and report

def test_region_multipliers_are_checked_against_the_method(photo, tmp_path, capsys):
    mask = tmp_path / "mask.png"
    PILImage.fromarray(np.full((96, 96), 255, np.uint8)).save(mask)
    for region, message in (("nosuch=0.5", "strength in [0, 1]"), ("strength=5", "must be in [0, 1]"),
                            ("strength=-1", "must be in [0, 1]"), ("strength=abc", "needs a number"),
                            ("strength=nan", "must be in [0, 1]")):
        out = tmp_path / "out.png"
        assert main(["denoise", str(photo), "-o", str(out), "--method", "passthrough", "--mask", str(mask),
                     "--region", region, "-q"]) == 2, region
        err = capsys.readouterr().err
        assert message in err and one_clean_line(err), (region, err)
        assert not out.exists()
    f2n, yond, cbsn = methods.get("f2n"), methods.get("yond"), methods.get("cbsn")
    assert regions.check_region_params(f2n, {"stage1_sigma_r": "4", "strength": 0}) == {"stage1_sigma_r": 4.0, "strength": 0.0}
    with pytest.raises(QuietLensError, match=r"noise_scale must be in \[0.25, 1.5\]"):
        regions.check_region_params(yond, {"noise_scale": 0.1})
    with pytest.raises(QuietLensError, match="no parameter 'network'"):  # a choice of network is not per pixel
        regions.check_region_params(cbsn, {"network": 1})


def test_strength_maps_clip_to_the_unit_interval(photo):
    """``strength × map`` outside [0, 1] would extrapolate past the input or the result."""
    image = io.load(photo).data
    result = np.clip(image + 0.1, 0, 1)
    ones = np.ones(image.shape[:2], np.float32)
    np.testing.assert_array_equal(methods.blend(image, result, 0.5, 4 * ones), result)
    np.testing.assert_array_equal(methods.blend(image, result, 1.0, -ones), image)
    np.testing.assert_allclose(methods.blend(image, result, 0.5, ones), (image + result) / 2, atol=1e-6)


def test_zero_workers_are_refused(photo, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    shutil.copy(photo, tmp_path / "in" / "a.png")
    with pytest.raises(QuietLensError, match="positive integer"):
        batch.run_batch(tmp_path / "in", tmp_path / "out", "passthrough", workers=0)
    with pytest.raises(SystemExit):
        main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--method", "passthrough", "--workers", "0"])
    assert "positive integer" in capsys.readouterr().err
    assert not (tmp_path / "out" / "a.png").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_batch_writes_its_report_and_says_what_it_kept(srgb_pairs, tmp_path, sig):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(40):
        shutil.copy(srgb_pairs[i % len(srgb_pairs)][0], src / f"p{i:02d}.png")
    code, err = interrupt_batch(src, out, sig)
    assert code == 130, err
    rep = json.loads((out / batch.REPORT_NAME).read_text())
    done, left = rep["counts"]["done"], rep["counts"]["cancelled"]
    assert done >= 1 and left >= 1 and done + left == 40
    assert f"{done} outputs were written and kept, {left} inputs were not started" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.glob("p*.png")) == sorted(
        Path(f["output"]).name for f in rep["files"] if f["status"] == "done")
    assert not [p for p in out.iterdir() if io.PARTIAL_NAME.match(p.name)]
