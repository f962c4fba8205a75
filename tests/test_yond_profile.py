"""`yond` with camera noise profiles from `quietlens calibrate`: matching, use, row noise, bad choices."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quietlens.engine import io, pipeline
from quietlens.engine.cli import main
from quietlens.engine.errors import QuietLensError
from quietlens.engine.methods import get
from quietlens.engine.methods.yond import remove_rows
from quietlens.engine.noise import cfa, pnnp
from rawgen import dark_frames, flat_frames, scene, write_dng

pytest.importorskip("torch")  # calibration trains the profile's pixel-noise proxy

SHAPE = (192, 256)
BLACK, WHITE = 512, 16383
SPAN = WHITE - BLACK
# The sensor: gain K (DN/e-), pixel and row noise (DN) per ISO; ISO 1600 lies between (log-interpolated).
SENSOR = {800: dict(gain=4.0, pixel=6.0, row=2.0), 3200: dict(gain=16.0, pixel=18.0, row=6.0)}
AT_1600 = dict(gain=8.0, pixel=np.sqrt(6.0 * 18.0), row=np.sqrt(2.0 * 6.0))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A user data folder holding the profile "cam" of the Synthetic camera (ISO 800–3200)."""
    root = tmp_path_factory.mktemp("profiles")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUIETLENS_DATA", str(root / "data"))
        for iso, p in SENSOR.items():
            dark_frames(root / "dark", iso, 8, shape=SHAPE, pixel=p["pixel"], row=p["row"], seed=iso)
            flat_frames(root / "flat", iso, gain=p["gain"], read=p["pixel"], shape=SHAPE, seed=iso)
        pnnp.calibrate(root / "dark", root / "flat", name="cam", steps=30)
    return root / "data"


@pytest.fixture(autouse=True)
def user_data(data_dir: Path, monkeypatch) -> Path:
    monkeypatch.setenv("QUIETLENS_DATA", str(data_dir))
    return data_dir


def shot(path: Path, iso: int | None = 1600, camera: str = "Synthetic", seed: int = 0) -> np.ndarray:
    """A dim scene taken by the calibrated sensor at ISO 1600 (its dark shading included); returns the
    clean normalised mosaic."""
    rng = np.random.default_rng(seed)
    clean = scene(SHAPE, seed, (0.002, 0.05))
    shading = np.random.default_rng(12345).normal(0, 2.0, SHAPE)  # the camera's (see rawgen.dark_frames)
    k = AT_1600["gain"]
    dn = (k * rng.poisson(clean * SPAN / k) + rng.normal(0, AT_1600["pixel"], SHAPE)
          + rng.normal(0, AT_1600["row"], (SHAPE[0], 1)) + shading)
    write_dng(path, np.clip(np.rint(dn + BLACK), 0, 65535), blacks=(BLACK,) * 4, white=WHITE, iso=iso, camera=camera)
    return clean


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def test_a_matching_profile_is_found_and_its_noise_model_used(tmp_path: Path) -> None:
    clean = shot(tmp_path / "x.dng")
    image = io.load(tmp_path / "x.dng")
    result = pipeline.denoise(image, "yond", provider="cpu")  # default: auto
    state = result.state
    assert state.source == "profile" and state.noise.method == "profile" and not state.warnings
    assert any("matched by camera and ISO" in n for n in state.notes)
    assert any("dark shading" in n for n in state.notes)  # the file is the calibrated sensor area
    # the profile's K and σ at ISO 1600 (between the calibrated ISOs), in the file's DN
    assert state.noise.K == pytest.approx(AT_1600["gain"], rel=0.1)
    assert state.noise.sigma == pytest.approx(AT_1600["pixel"], rel=0.1)
    assert state.blind is not None and state.blind.method != "profile"  # the blind estimate, for comparison
    facts = state.summary()
    assert facts["source"] == "profile" and facts["profile"]["name"] == "cam" and facts["profile"]["iso"] == 1600
    assert facts["final"]["K"] == state.noise.K and facts["blind"]["K"] == state.blind.K
    json.dumps(facts)
    shown = get("yond").noise_model(state)  # what the noise panel plots: the profile, the blind estimate beside it
    assert "profile 'cam'" in shown.source and shown.K == pytest.approx(state.noise.K)
    assert "blind" in shown.alternative.source and shown.alternative.K == pytest.approx(state.blind.K)
    assert _psnr(result.image.data, clean) > _psnr(image.data, clean) + 3

    blind = pipeline.denoise(image, get("yond", options={"profile": "none"}), provider="cpu").state
    assert blind.source == "blind" and blind.profile is None and blind.noise.method != "profile"
    named = pipeline.denoise(image, get("yond", options={"profile": "cam"}), provider="cpu").state
    assert named.source == "profile" and named.noise.K == state.noise.K


def test_info_noise_compares_the_profile_with_the_blind_estimate(tmp_path: Path, capsys) -> None:
    shot(tmp_path / "x.dng")
    assert main(["info", str(tmp_path / "x.dng"), "--noise", "--profile", "cam"]) == 0
    out = capsys.readouterr().out
    assert "noise source" in out and "profile 'cam' at ISO 1600" in out and "noise blind" in out
    assert main(["info", str(tmp_path / "x.dng"), "--noise", "--profile", "none", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)["noise"]
    assert facts["source"] == "blind" and facts["profile"] is None


def test_profile_of_another_camera_warns_and_falls_back_to_the_blind_estimate(tmp_path: Path, capsys) -> None:
    shot(tmp_path / "other.dng", camera="Another Camera")
    src, dst = tmp_path / "other.dng", tmp_path / "out.dng"
    assert main(["denoise", str(src), "-o", str(dst), "--method", "yond", "--profile", "cam", "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "calibrated on Synthetic" in err and "Another Camera" in err and "blind" in err
    assert dst.is_file()
    state = pipeline.denoise(io.load(src), get("yond", options={"profile": "cam"}), provider="cpu").state
    assert state.source == "blind" and state.warnings
    auto = pipeline.denoise(io.load(src), "yond", provider="cpu").state  # auto: no profile of this camera
    assert auto.source == "blind" and not auto.warnings


@pytest.mark.parametrize("iso", [51200, None])
def test_iso_outside_the_profile_or_unknown_falls_back(tmp_path: Path, iso: int | None) -> None:
    shot(tmp_path / "x.dng", iso=iso)
    image = io.load(tmp_path / "x.dng")
    named = pipeline.denoise(image, get("yond", options={"profile": "cam"}), provider="cpu").state
    assert named.source == "blind"
    assert any(("covers ISO 800–3200" in w) if iso else ("does not record its ISO" in w) for w in named.warnings)
    auto = pipeline.denoise(image, "yond", provider="cpu").state
    assert auto.source == "blind" and not auto.warnings and any("do not cover" in n for n in auto.notes)


def test_bad_profile_choices_fail_before_any_work(tmp_path: Path, capsys, user_data: Path) -> None:
    shot(tmp_path / "x.dng")
    src = str(tmp_path / "x.dng")
    assert main(["denoise", src, "-o", str(tmp_path / "o.dng"), "--method", "yond", "--profile", "nope"]) == 2
    assert "no such noise profile" in capsys.readouterr().err and not (tmp_path / "o.dng").exists()
    assert main(["denoise", src, "-o", str(tmp_path / "o.png"), "--method", "cbsn", "--profile", "cam"]) == 2
    assert "has no option profile" in capsys.readouterr().err
    with pytest.raises(QuietLensError, match="has no option"):
        get("yond", options={"strength": "1"})
    # a damaged profile in the folder does not stop automatic matching
    (user_data / "profiles" / "broken").mkdir()
    (user_data / "profiles" / "broken" / "profile.json").write_text("{not json")
    try:
        assert pipeline.denoise(io.load(src), "yond", provider="cpu").state.source == "profile"
    finally:
        (user_data / "profiles" / "broken" / "profile.json").unlink()
        (user_data / "profiles" / "broken").rmdir()


def test_batch_takes_a_profile_and_reports_the_files_it_did_not_fit(tmp_path: Path, capsys) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    shot(inp / "ours.dng")
    shot(inp / "theirs.dng", camera="Another Camera", seed=1)
    out = tmp_path / "out"
    assert main(["batch", str(inp), "-o", str(out), "--method", "yond", "--profile", "cam", "-q"]) == 0
    report = json.loads((out / "quietlens-report.json").read_text())
    assert report["options"] == {"profile": "cam"}
    files = {Path(f["input"]).name: f for f in report["files"]}
    assert files["ours.dng"]["status"] == files["theirs.dng"]["status"] == "done"
    assert files["ours.dng"]["warnings"] == [] and "calibrated on Synthetic" in files["theirs.dng"]["warnings"][0]
    assert main(["batch", str(inp), "-o", str(tmp_path / "o2"), "--method", "yond", "--profile", "nope"]) == 2


def test_row_offsets_are_recovered_from_the_residual() -> None:
    """Known row offsets on a clean scene with white noise: with the clean scene as the first pass, the
    removed offsets are the true ones, shrunk by row² / (row² + var(row mean))."""
    rng = np.random.default_rng(0)
    h, w, row, pixel = 128, 512, 0.004, 0.01
    clean = scene((h, w), 2, (0.05, 0.5))
    offsets = rng.normal(0, row, (h, 1))
    noisy = clean + offsets + rng.normal(0, pixel, (h, w))
    for pattern in ("RGGB", "GBRG"):
        planes, truth = cfa.pack(noisy, pattern), cfa.pack(clean, pattern)
        fixed = remove_rows(planes, truth, pattern, row)
        removed = cfa.unpack(planes - fixed, pattern, (h, w))
        assert np.allclose(removed, removed[:, :1], atol=1e-6)  # one offset per mosaic row
        shrink = row**2 / (row**2 + pixel**2 / w)
        np.testing.assert_allclose(removed[:, 0], shrink * offsets[:, 0], atol=4 * pixel / np.sqrt(w))
        left = (cfa.unpack(fixed, pattern, (h, w)) - clean).mean(axis=1)  # what remains of the row offsets
        assert left.std() < 0.2 * row < (noisy - clean).mean(axis=1).std()
