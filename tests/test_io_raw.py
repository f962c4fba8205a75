"""RAW loading, rendering and DNG/TIFF writing on the real captures and on small synthetic DNGs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rawpy
import tifffile

from quietlens.engine import io
from quietlens.engine.errors import (
    CorruptFileError, InvalidImageError, QuietLensError, UnsupportedFormatError,
)
from quietlens.engine.io import raw

BAYER_PHASES = ("RGGB", "BGGR", "GRBG", "GBRG")
IDENTITY = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)


@pytest.fixture(scope="module")
def loaded(raw_files: list[Path]) -> dict[Path, io.Image]:
    return {path: io.load(path) for path in raw_files}


def _span(image: io.Image) -> float:
    """The widest (white - black): turns normalised differences back into sensor DN, conservatively."""
    return image.meta["white_level"] - min(image.meta["black_level_per_channel"])


def _write_dng(path: Path, cfa: str, mosaic: np.ndarray, blacks=(0, 0, 0, 0), white=4095, extra=()) -> None:
    """A minimal CFA DNG made directly with tifffile (independent of raw.write)."""
    tags = [
        (33421, 3, 2, (2, 2)),
        (33422, 1, 4, bytes("RGB".index(c) for c in cfa)),
        (50706, 1, 4, bytes((1, 4, 0, 0))),
        (50708, 2, 0, "Synthetic"),
        (50713, 3, 2, (2, 2)),
        (50714, 4, 4, tuple(blacks)),
        (50717, 4, 1, white),
        (50721, 10, 9, IDENTITY),
        (50778, 3, 1, 21),
        (50728, 5, 3, (1, 2, 1, 1, 1, 2)),
        *extra,
    ]
    tifffile.imwrite(path, mosaic, photometric=32803, extratags=[(*t, True) for t in tags])


def test_real_raws_load_with_sane_metadata(loaded: dict[Path, io.Image]) -> None:
    for path, image in loaded.items():
        meta = image.meta
        assert (image.kind, image.axes, image.fmt, image.data.dtype) == ("raw", "HW", "raw", np.float32)
        with rawpy.imread(str(path)) as r:
            assert image.data.shape == r.raw_image_visible.shape
            desc = r.color_desc.decode()
            expected_cfa = "".join(desc[c] for c in r.raw_colors_visible[:2, :2].ravel())
        assert meta["cfa_pattern"] == expected_cfa and expected_cfa in BAYER_PHASES, path.name
        assert meta["white_level"] > max(meta["black_level_per_channel"]), path.name
        inside = np.mean((image.data >= -0.05) & (image.data <= 1.05))
        assert inside > 0.99, path.name
        assert len(meta["camera_whitebalance"]) == 4 and len(meta["daylight_whitebalance"]) == 4
        assert np.shape(meta["rgb_xyz_matrix"]) == (4, 3) and np.shape(meta["color_matrix"]) == (3, 4)
        summary = json.loads(json.dumps(image.describe()))
        assert summary["cfa"] == expected_cfa and summary["raw_size"] == list(image.data.shape)
        for key in ("iso", "exposure_time", "make", "model"):
            assert key in meta
    kodak = next((im for p, im in loaded.items() if p.suffix.upper() == ".KDC"), None)
    if kodak is not None:  # EXIF from the file itself, not invented
        assert kodak.meta["iso"] == 84 and kodak.meta["exposure_time"] == pytest.approx(0.00435)
        assert kodak.meta["make"] == "Eastman Kodak Company"


def test_real_raws_render_and_write_tif_and_dng(loaded: dict[Path, io.Image], tmp_path: Path) -> None:
    for path, image in loaded.items():
        half = raw.render(image, half_size=True)
        assert half.ndim == 3 and half.shape[2] == 3 and half.dtype == np.float32
        assert abs(half.shape[0] - image.height / 2) <= 1 and abs(half.shape[1] - image.width / 2) <= 1
        assert 0 <= half.min() and half.max() <= 1 and half.mean() > 0.01

        tif = io.save(image, tmp_path / f"{path.stem}.tif")
        rendered = tifffile.imread(tif)
        assert rendered.dtype == np.uint16 and rendered.shape == (image.height, image.width, 3)

        dng = io.save(image, tmp_path / f"{path.stem}.dng")
        assert raw.is_dng(dng)
        back = io.load(dng)
        assert back.kind == "raw" and back.meta["cfa_pattern"] == image.meta["cfa_pattern"]
        assert np.abs(back.data - image.data).max() * _span(image) <= 1.0, path.name
        assert back.meta["model"] == image.meta["model"]
        for key in ("iso", "exposure_time"):
            assert back.meta[key] == (None if image.meta[key] is None else pytest.approx(image.meta[key]))
        assert raw.render(back, half_size=True).shape == half.shape


def test_denoised_values_survive_dng_within_one_dn(loaded: dict[Path, io.Image], tmp_path: Path) -> None:
    image = min(loaded.values(), key=lambda im: im.data.size)
    rng = np.random.default_rng(0)
    smooth = image.with_data(np.clip(image.data + rng.normal(0, 0.01, image.data.shape), 0.0, 1.0))
    back = io.load(io.save(smooth, tmp_path / "smooth.dng"))
    assert np.abs(back.data - smooth.data).max() * _span(image) <= 1.0
    png = io.load(io.save(smooth, tmp_path / "smooth.png"))
    assert png.kind == "photo" and png.meta["dtype"] == "uint16" and png.data.shape[2] == 3


@pytest.mark.parametrize("cfa", BAYER_PHASES)
def test_synthetic_dng_each_bayer_phase(tmp_path: Path, cfa: str) -> None:
    blacks, white = (60, 64, 68, 72), 4000
    mosaic = np.random.default_rng(1).integers(80, white, (24, 34), dtype=np.uint16)
    _write_dng(tmp_path / "s.dng", cfa, mosaic, blacks, white)
    image = io.load(tmp_path / "s.dng")
    assert image.meta["cfa_pattern"] == cfa
    black = np.tile(np.reshape(blacks, (2, 2)), (12, 17)).astype(np.float32)
    np.testing.assert_allclose(image.data, (mosaic - black) / (white - black), rtol=1e-6)
    back = io.load(io.save(image, tmp_path / "out.dng"))
    assert back.meta["cfa_pattern"] == cfa
    assert np.abs(back.data - image.data).max() * (white - max(blacks)) <= 1.0


def test_synthetic_dng_reads_iso_and_exposure(tmp_path: Path) -> None:
    mosaic = np.full((32, 32), 1000, np.uint16)  # LibRaw rejects images under 22 pixels a side
    _write_dng(tmp_path / "e.dng", "RGGB", mosaic, extra=[(33434, 5, 1, (1, 250)), (34855, 3, 1, 800)])
    meta = io.load(tmp_path / "e.dng").meta
    assert meta["iso"] == 800 and meta["exposure_time"] == pytest.approx(1 / 250)
    assert meta["summary"]["camera"] == "Synthetic"


def test_non_bayer_raws_are_unsupported(tmp_path: Path) -> None:
    xtrans = "GGRGGBGGBGGRBBGRRGGGBGGRGGRGGBRRGBBG"
    mosaic = np.full((36, 48), 1000, np.uint16)
    common = [
        (50706, 1, 4, bytes((1, 4, 0, 0)), True), (50717, 4, 1, 4095, True), (50721, 10, 9, IDENTITY, True),
    ]
    cfa = [(33421, 3, 2, (6, 6), True), (33422, 1, 36, bytes("RGB".index(c) for c in xtrans), True)]
    tifffile.imwrite(tmp_path / "xtrans.dng", mosaic, photometric=32803, extratags=common + cfa)
    tifffile.imwrite(tmp_path / "linear.dng", np.dstack([mosaic] * 3), photometric=34892, extratags=common)
    for name, words in (("xtrans.dng", "X-Trans"), ("linear.dng", "demosaiced")):
        with pytest.raises(UnsupportedFormatError, match=words) as err:
            io.load(tmp_path / name)
        assert name in str(err.value)


def test_truncated_raw_is_corrupt(raw_files: list[Path], tmp_path: Path) -> None:
    source = next(p for p in raw_files if p.suffix.lower() == ".dng")
    cut = tmp_path / "cut.dng"
    cut.write_bytes(source.read_bytes()[:50_000])
    with pytest.raises(CorruptFileError) as err:
        io.load(cut)
    assert "cut.dng" in str(err.value)
    assert not raw.is_dng(tmp_path / "missing.dng")


def test_dng_is_recognised_by_content(raw_files: list[Path], tmp_path: Path) -> None:
    source = next(p for p in raw_files if p.suffix.lower() == ".dng")
    renamed = tmp_path / "renamed.tif"
    renamed.write_bytes(source.read_bytes())
    assert io.sniff(renamed) == "raw" and io.load(renamed).kind == "raw"
    assert all(raw.is_dng(p) == (p.suffix.lower() == ".dng") for p in raw_files)


def test_render_needs_the_source(loaded: dict[Path, io.Image]) -> None:
    image = min(loaded.values(), key=lambda im: im.data.size)
    with pytest.raises(InvalidImageError):
        raw.render(image.with_data(image.data, source=None))
    with pytest.raises(QuietLensError):
        raw.render(image.with_data(image.data[:-2]))


def test_render_applies_dng_baseline_exposure(loaded: dict[Path, io.Image]) -> None:
    """A DNG that asks for +2.65 EV (Blackmagic) renders brighter than the same mosaic without the tag;
    a DNG with BaselineExposure 0 renders exactly as before."""
    def without_baseline(image: io.Image) -> io.Image:
        meta = dict(image.meta, dng_colour_tags=[t for t in image.meta["dng_colour_tags"] if t[0] != 50730])
        return image.with_data(image.data, meta=meta)

    by_name = {path.name: image for path, image in loaded.items()}
    bright = by_name["Blackmagic.dng"]
    assert raw.baseline_exposure(bright.meta) == pytest.approx(2.654, abs=1e-3)
    lifted, plain = raw.render(bright), raw.render(without_baseline(bright))
    assert np.median(lifted) > 1.5 * np.median(plain)
    neutral = by_name["colorchart.dng"]
    assert raw.baseline_exposure(neutral.meta) == 0.0
    np.testing.assert_array_equal(raw.render(neutral), raw.render(without_baseline(neutral)))
