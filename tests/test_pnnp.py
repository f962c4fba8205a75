"""PNNP: dark-frame statistics, calibration into a profile, the proxy network and noisy-data synthesis."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quietlens.engine import io
from quietlens.engine.cli import main
from quietlens.engine.noise import pnnp
from quietlens.engine.noise.physics import tukey_lambda_noise
from rawgen import dark_frames, flat_frames, scene, write_dng

ISOS = {800: dict(pixel=4.0, row=1.5, gain=0.8), 3200: dict(pixel=12.0, row=4.0, gain=3.2)}


@pytest.fixture(autouse=True)
def user_data(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("frames")
    for iso, p in ISOS.items():
        dark_frames(root / "dark", iso, 8, pixel=p["pixel"], row=p["row"], seed=iso)
        flat_frames(root / "flat", iso, gain=p["gain"], read=p["pixel"], seed=iso)
    return root / "dark", root / "flat"


def test_dark_statistics_recover_the_generating_model() -> None:
    rng = np.random.default_rng(0)
    f, h, w = 16, 200, 300
    shading = rng.normal(0, 2.0, (h, w))
    frames = (shading + rng.normal(0, 3.0, (f, h, 1)) + rng.normal(0, 1.0, (f, 1, w))
              + tukey_lambda_noise(rng, (f, h, w), -0.2, 5.0))
    s = pnnp.dark_statistics(frames, 1600, rng)
    assert s.row_std == pytest.approx(3.0, rel=0.12) and s.col_std == pytest.approx(1.0, rel=0.12)
    assert s.pixel_std == pytest.approx(5.0, rel=0.03) and s.tukey_std == pytest.approx(5.0, rel=0.05)
    assert s.tukey_lambda == pytest.approx(-0.2, abs=0.06)
    assert np.corrcoef(s.shading.ravel(), shading.ravel())[0, 1] > 0.75


def test_flat_pairs_measure_the_gain() -> None:
    rng = np.random.default_rng(1)
    response = 1 + rng.normal(0, 0.01, (100, 120))
    flats = [1.5 * rng.poisson(level * response / 1.5) + rng.normal(0, 3, (100, 120))
             for level in (500, 500, 3000, 3000)]
    gain, points = pnnp.flat_gain(flats, None, 9.0)
    assert gain == pytest.approx(1.5, rel=0.05) and len(points) == 2


def test_distribution_loss_and_proxy_export(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from quietlens.engine import runtime
    from quietlens.models import pnnp as proxy

    torch.manual_seed(0)
    levels = proxy.probit_levels()
    a, b = torch.randn(20000), torch.randn(20000)
    target = proxy.distribution_target(b, levels)
    assert proxy.distribution_loss(b, target, levels) == 0
    assert proxy.distribution_loss(a, target, levels) < 0.05 < proxy.distribution_loss(a * 1.5, target, levels)
    model = proxy.PixelProxy()
    assert 2000 < sum(p.numel() for p in model.parameters()) < 2600
    for p in model.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    path = proxy.export_onnx(model, tmp_path / "proxy.onnx")
    x = np.random.default_rng(0).standard_normal((2, 1, 1, 16, 16), dtype=np.float32)
    gain = np.array([2.5], np.float32)
    got = runtime.session(path, "cpu").run({"x_pre": x[0], "x_fol": x[1], "gain": gain})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(x[0]), torch.from_numpy(x[1]), torch.from_numpy(gain)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_calibrate_then_synthesize(frames: tuple[Path, Path], tmp_path: Path, user_data: Path) -> None:
    dark, flat = frames
    assert main(["calibrate", "--dark", str(dark), "--flat", str(flat), "--name", "cam", "--steps", "60", "-q"]) == 0
    folder = user_data / "profiles" / "cam"
    doc = json.loads((folder / "profile.json").read_text())
    assert (folder / doc["proxy"]["file"]).is_file()
    for entry in doc["isos"]:
        truth = ISOS[int(entry["iso"])]
        assert entry["gain"] == pytest.approx(truth["gain"], rel=0.08)
        assert entry["row_std"] == pytest.approx(truth["row"], rel=0.25)
        assert entry["pixel_std"] == pytest.approx(truth["pixel"], rel=0.05)
        assert (folder / entry["shading"]).is_file()

    # Clean frames at black synthesise dark frames: their statistics must be the calibrated ones.
    clean = tmp_path / "clean"
    clean.mkdir()
    write_dng(clean / "black.dng", np.full((96, 128), 512), blacks=(512,) * 4, white=16383)
    write_dng(clean / "scene.dng", np.rint(512 + scene((96, 128)) * 15871), blacks=(512,) * 4, white=16383)
    out = tmp_path / "out"
    assert main(["synthesize", "--clean", str(clean), "--profile", "cam", "-o", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "black_iso3200.dng", "black_iso800.dng", "scene_iso3200.dng", "scene_iso800.dng"]
    for iso, truth in ISOS.items():
        noisy = io.load(out / f"black_iso{iso}.dng")
        assert noisy.meta["iso"] == iso and noisy.meta["cfa_pattern"] == "RGGB"
        # in the profile camera's DN (the DNG writer may rescale to 16 bits): pixel noise, the dark
        # shading (added by design) and row/column offsets
        dn = noisy.data * (16383 - 512)
        pixel = dn - dn.mean(axis=1, keepdims=True) - dn.mean(axis=0, keepdims=True) + dn.mean()
        expected = np.hypot(truth["pixel"], np.load(folder / f"shading_iso{iso}.npy").astype(np.float32).std())
        assert pixel.std() == pytest.approx(expected, rel=0.12), iso
    assert main(["synthesize", "--clean", str(clean), "--profile", str(folder), "-o", str(out),
                 "--iso", "1600", "--format", "npz", "-q"]) == 0
    data = np.load(out / "scene_iso1600.npz")
    assert data["noisy"].dtype == np.uint16 and data["clean"].shape == (96, 128)
    assert float(data["gain"]) == pytest.approx(1.6, rel=0.1)  # between the calibrated ISOs


def test_calibration_and_synthesis_errors(tmp_path: Path, frames: tuple[Path, Path], user_data: Path,
                                         capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["calibrate", "--dark", str(tmp_path / "empty"), "-q"]) == 2
    assert "no raw files" in capsys.readouterr().err
    assert main(["synthesize", "--clean", str(tmp_path), "--profile", "nope", "-o", str(tmp_path / "o")]) == 2
    assert "calibrate" in capsys.readouterr().err
    # a profile calibrated without flat frames knows no gain: synthesis needs --gain
    folder = user_data / "profiles" / "noflat"
    folder.mkdir(parents=True)
    doc = {"schema": 1, "name": "noflat", "isos": [{"iso": 800.0, "gain": None}]}
    (folder / "profile.json").write_text(json.dumps(doc))
    dark, _ = frames
    assert main(["synthesize", "--clean", str(dark), "--profile", "noflat", "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "--gain" in capsys.readouterr().err
