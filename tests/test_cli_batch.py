"""The CLI and the batch runner on real files: output naming, resume, failures, nothing lost."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quietlens.engine import batch, io, pipeline
from quietlens.engine.cli import main
from quietlens.engine.errors import InvalidImageError, QuietLensError
from quietlens.engine.progress import CancelToken


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_package_installs_under_one_namespace(tmp_path):
    """`quietlens.engine` imports; bare `engine`/`app`/`models` do not exist outside the source tree."""
    code = ("import importlib.util as u, quietlens.engine, quietlens.app, quietlens.models;"
            "print([u.find_spec(n) is None for n in ('engine', 'app', 'models')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[True, True, True]"


def test_entry_point_reports_version():
    out = subprocess.run([sys.executable, "-m", "quietlens.engine.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("QuietLens ")


def test_methods_hides_plumbing(capsys):
    from quietlens.engine import methods

    assert run_cli("methods") == 0
    out = capsys.readouterr().out
    assert "passthrough" not in out
    for p in (p for m in methods.available() for p in m.params if p.choices):  # choices by name, not 0..2
        assert f"--param {p.name}=<{'|'.join(p.choices)}, default {p.choices[int(p.default)]}>" in out
    assert run_cli("methods", "--all") == 0
    assert "passthrough" in capsys.readouterr().out


def test_denoise_photo_round_trip_and_never_overwrites(srgb_pairs, tmp_path, capsys):
    noisy, _ = srgb_pairs[0]
    out = tmp_path / "out.png"
    assert run_cli("denoise", noisy, "-o", out, "--method", "passthrough", "-q") == 0
    assert np.array_equal(io.load(out).data, io.load(noisy).data)
    before = out.read_bytes()
    assert run_cli("denoise", noisy, "-o", out, "--method", "passthrough", "-q") == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    copy = tmp_path / "in.png"
    shutil.copy(noisy, copy)
    original = copy.read_bytes()
    assert run_cli("denoise", copy, "-o", copy, "--method", "passthrough", "--overwrite", "-q") == 2
    assert copy.read_bytes() == original


@pytest.mark.parametrize("argv, message", [
    (["--method", "nosuch"], "unknown method"),
    (["--method", "passthrough", "--param", "strength=2"], "must be a value in"),
    (["--method", "passthrough", "--param", "nosuch=1"], "has no parameter"),
    (["--method", "passthrough", "--param", "strength"], "NAME=VALUE"),
])
def test_denoise_bad_requests_are_one_line_errors(srgb_pairs, tmp_path, capsys, argv, message):
    noisy, _ = srgb_pairs[0]
    assert run_cli("denoise", noisy, "-o", tmp_path / "o.png", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_denoise_to_wrong_format_fails_before_work(mr_series_dir, tmp_path, capsys):
    assert run_cli("denoise", mr_series_dir, "-o", tmp_path / "x.png", "--method", "passthrough") == 2
    assert "can be written as" in capsys.readouterr().err


def test_info_on_series_and_raw(mr_series_dir, raw_files, capsys):
    assert run_cli("info", mr_series_dir, "--json") == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["kind"] == "mr" and facts["shape"][0] == 40
    assert run_cli("info", raw_files[0], "--json") == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "raw"


def test_info_labels_and_rounds_for_people_json_keeps_precision(mr_series_dir, pydicom_ct, capsys):
    import re

    for path in (mr_series_dir, pydicom_ct):
        assert run_cli("info", path, "--json") == 0
        facts = json.loads(capsys.readouterr().out)
        assert run_cli("info", path) == 0
        lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1)
                     for line in capsys.readouterr().out.splitlines()[1:] if line.strip())
        unit = " HU" if facts["kind"] == "ct" else ""
        window = re.fullmatch(rf"centre (-?[\d.]+), width ([\d.]+){unit}", lines["window"])
        assert window, lines["window"]  # named, in the image's unit, without exponents
        for shown, exact in zip(map(float, window.groups()), facts["window"]):
            assert abs(shown - exact) <= max(0.5, abs(exact) * 5e-4)
        shown = [float(v) for v in lines["spacing"].split(" mm")[0].split(" × ")]
        assert len(shown) == len(facts["spacing"]) and np.allclose(shown, facts["spacing"], rtol=5e-4)
        assert all(len(v) <= 6 for v in lines["spacing"].split(" mm")[0].split(" × "))
        assert lines["values"].endswith(unit) and " … " in lines["values"]
    # the MR series' slice spacing is not a round number: --json keeps every digit of it
    assert run_cli("info", mr_series_dir, "--json") == 0
    spacing = json.loads(capsys.readouterr().out)["spacing"]
    assert spacing[0] != round(spacing[0], 4)


def make_batch_tree(root: Path, srgb_pairs, mr_series_dir) -> None:
    (root / "photos" / "sub dir").mkdir(parents=True)
    for noisy, _ in srgb_pairs[:2]:
        shutil.copy(noisy, root / "photos" / noisy.name)
    shutil.copy(srgb_pairs[2][0], root / "photos" / "sub dir" / "ünïcode name.png")
    (root / "photos" / "broken.png").write_bytes(srgb_pairs[0][0].read_bytes()[:5000])
    (root / "photos" / "empty.jpg").write_bytes(b"")
    (root / "photos" / "notes.txt").write_text("not an image")
    shutil.copytree(mr_series_dir, root / "mr" / "series1")


def test_batch_mirrors_reports_failures_and_resumes(srgb_pairs, mr_series_dir, tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    make_batch_tree(src, srgb_pairs, mr_series_dir)
    snapshot = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}

    code = run_cli("batch", src, "-o", dst, "--method", "passthrough", "-q")
    assert code == 1  # two bad files
    report = json.loads((dst / batch.REPORT_NAME).read_text())
    status = {Path(f["input"]).name: f["status"] for f in report["files"]}
    assert status["broken.png"] == "failed" and status["empty.jpg"] == "failed"
    assert status["series1"] == "done" and status["ünïcode name.png"] == "done"
    assert "notes.txt" not in status
    assert all(f["error"] for f in report["files"] if f["status"] == "failed")
    assert report["counts"] == {"done": 4, "skipped": 0, "failed": 2, "cancelled": 0}
    assert (dst / "photos" / "sub dir" / "ünïcode name.png").is_file()
    assert len(list((dst / "mr" / "series1").glob("*.dcm"))) == 40
    assert not list(dst.rglob(".*part*")), "no temporary files left behind"
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == snapshot, "inputs untouched"

    # Resume: finished outputs are skipped, a fixed input is picked up.
    shutil.copy(srgb_pairs[0][0], src / "photos" / "broken.png")
    assert run_cli("batch", src, "-o", dst, "--method", "passthrough", "-q") == 1
    report = json.loads((dst / batch.REPORT_NAME).read_text())
    assert report["counts"] == {"done": 1, "skipped": 4, "failed": 1, "cancelled": 0}


def test_batch_cancelled_writes_nothing(srgb_pairs, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(srgb_pairs[0][0], src / "a.png")
    token = CancelToken()
    token.cancel()
    results = batch.run_batch(src, tmp_path / "out", "passthrough", cancel=token)
    assert [r.status for r in results] == ["cancelled"]
    assert not (tmp_path / "out" / "a.png").exists()


def test_batch_leaves_no_lock_file(srgb_pairs, tmp_path):
    """The output folder's lock file goes when the batch ends (done, cancelled or failed); one a crash
    left behind (unlocked) neither blocks the next batch nor survives it."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(srgb_pairs[0][0], src / "a.png")
    assert run_cli("batch", src, "-o", out, "--method", "passthrough", "-q") == 0
    assert (out / "a.png").is_file() and not (out / batch.LOCK_NAME).exists()
    token = CancelToken()
    token.cancel()
    batch.run_batch(src, tmp_path / "cancelled", "passthrough", cancel=token)
    assert not (tmp_path / "cancelled" / batch.LOCK_NAME).exists()
    (out / batch.LOCK_NAME).write_bytes(b"")  # what a killed batch leaves
    (out / "a.png").unlink()
    assert [r.status for r in batch.run_batch(src, out, "passthrough")] == ["done"]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", batch.REPORT_NAME]


def test_batch_read_only_output(srgb_pairs, tmp_path, as_ordinary_user):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    shutil.copy(srgb_pairs[0][0], src / "a.png")
    dst.chmod(0o500)
    try:
        out = subprocess.run([*as_ordinary_user, sys.executable, "-m", "quietlens.engine.cli", "batch", str(src),
                              "-o", str(dst), "--method", "passthrough", "-q"], capture_output=True, text=True)
    finally:
        dst.chmod(0o700)
    assert out.returncode == 2, out.stderr
    assert "not writable" in out.stderr and "Traceback" not in out.stderr
    assert not list(dst.iterdir())


def test_batch_refuses_output_inside_input(srgb_pairs, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(QuietLensError, match="outside the input"):
        batch.run_batch(tmp_path / "in", tmp_path / "in" / "out", "passthrough")


def test_region_maps_follow_the_mask(mr_series_dir, tmp_path):
    image = io.load(mr_series_dir)
    mask = np.zeros(image.data.shape[1:], bool)
    mask[10:20, 30:40] = True
    maps = pipeline.region_maps(image, mask, {"strength": 0.25})
    assert maps["strength"].shape == image.data.shape
    assert np.all(maps["strength"][:, 10:20, 30:40] == 0.25)
    assert maps["strength"].sum() == pytest.approx(image.data.size - 0.75 * 100 * image.data.shape[0])
    with pytest.raises(InvalidImageError, match="does not match"):
        pipeline.region_maps(image, mask[:-1], {"strength": 0.5})
    with pytest.raises(QuietLensError, match="need a mask"):
        pipeline.region_maps(image, None, {"strength": 0.5})
