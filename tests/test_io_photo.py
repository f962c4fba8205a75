"""Photo loading and writing: bit depth, channels, alpha, EXIF/ICC, bad inputs and atomic saves."""
from __future__ import annotations

import io as bytes_io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage
from PIL import ImageCms

from quietlens.engine import io
from quietlens.engine.errors import OutputError, QuietLensError, UnsupportedFormatError
from quietlens.engine.io import photo

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
def exif() -> bytes:
    block = PILImage.Exif()
    block[0x010F] = "QuietLens Test Camera"  # Make
    block[0x0132] = "2024:05:06 07:08:09"  # DateTime
    return block.tobytes()


def _u8(shape) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _u16(shape) -> np.ndarray:
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def _pixels(path: Path) -> np.ndarray:
    """A file's stored samples, RGB order, read independently of the code under test."""
    if path.suffix in (".tif", ".tiff"):
        return tifffile.imread(path)
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    with PILImage.open(path) as im:
        if im.mode == "LA":  # OpenCV expands grey + alpha to BGRA
            return stored[..., [0, 3]]
    return stored[..., [2, 1, 0, 3][: stored.shape[2]]] if stored.ndim == 3 else stored


def _round_trip(image: io.Image, path: Path) -> io.Image:
    return io.load(io.save(image, path))


def test_real_srgb_pngs_round_trip_bit_exactly(srgb_pairs, tmp_path: Path) -> None:
    files = [p for pair in srgb_pairs for p in pair]
    assert files
    for i, path in enumerate(files):
        image = io.load(path)
        assert (image.kind, image.axes, image.fmt) == ("photo", "HWC", "png")
        assert image.data.shape[2] == 3 and image.meta["dtype"] == "uint8"
        assert image.describe()["bit_depth"] == 8
        out = io.save(image, tmp_path / f"{i}.png")
        assert np.array_equal(_pixels(out), _pixels(path)), path.name


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_round_trips_exactly(tmp_path: Path, suffix: str, channels: int) -> None:
    pixels = _u16((40, 50, channels))
    src = tmp_path / f"src{suffix}"
    if suffix == ".png":
        cv2.imwrite(str(src), pixels[..., ::-1] if channels == 3 else pixels[..., 0])
    else:
        tifffile.imwrite(src, pixels.squeeze(), photometric="rgb" if channels == 3 else "minisblack")
    image = io.load(src)
    assert image.data.shape == (40, 50, channels) and image.meta["dtype"] == "uint16"
    assert np.array_equal(np.rint(image.data * 65535).astype(np.uint16), pixels)
    out = io.save(image, tmp_path / f"out{suffix}")
    assert np.array_equal(_pixels(out).reshape(pixels.shape), pixels)


def test_float_tiff_round_trips_exactly(tmp_path: Path) -> None:
    pixels = RNG.normal(0.5, 0.7, (30, 20, 3)).astype(np.float32)  # out-of-range values are kept
    tifffile.imwrite(tmp_path / "f.tif", pixels, photometric="rgb")
    image = io.load(tmp_path / "f.tif")
    assert image.meta["dtype"] == "float32" and np.array_equal(image.data, pixels)
    assert np.array_equal(tifffile.imread(io.save(image, tmp_path / "out.tiff")), pixels)
    png = _pixels(io.save(image, tmp_path / "out.png"))  # PNG holds no floats: 16-bit
    assert png.dtype == np.uint16 and np.array_equal(png, np.rint(np.clip(pixels, 0, 1) * 65535))


def test_tiffs_tifffile_cannot_decode_load_through_libtiff(tmp_path: Path) -> None:
    pixels = _u8((20, 30, 3))
    PILImage.fromarray(pixels).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    image = io.load(tmp_path / "lzw.tif")
    assert np.array_equal(np.rint(image.data * 255).astype(np.uint8), pixels)
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    PILImage.fromarray(red).convert("YCbCr").save(tmp_path / "ycbcr.tif", compression="jpeg")
    image = io.load(tmp_path / "ycbcr.tif")
    assert image.data[8, 8, 0] > 0.9 and image.data[8, 8, 1:].max() < 0.1


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".webp"])
def test_grayscale_stays_one_channel(tmp_path: Path, suffix: str) -> None:
    PILImage.fromarray(np.full((16, 24), 77, np.uint8)).save(tmp_path / f"g{suffix}")
    image = io.load(tmp_path / f"g{suffix}")
    if suffix == ".webp":  # WebP has no grey mode: Pillow stores RGB
        assert image.data.shape[2] == 3
        return
    assert image.data.shape == (16, 24, 1)
    out = io.load(io.save(image, tmp_path / f"out{suffix}"))
    assert out.data.shape == (16, 24, 1) and abs(float(out.data.mean()) - 77 / 255) < 2 / 255


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".webp"])
def test_channel_order_is_rgb(tmp_path: Path, suffix: str) -> None:
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    PILImage.fromarray(red).save(tmp_path / f"red{suffix}")
    image = io.load(tmp_path / f"red{suffix}")
    assert image.data[8, 8, 0] > 0.9 and image.data[8, 8, 1:].max() < 0.1
    out = _pixels(io.save(image, tmp_path / f"out{suffix}"))
    assert out[8, 8, 0] > 230 and out[8, 8, 1:].max() < 25


@pytest.mark.parametrize(
    "name, pixels",
    [("rgba8.png", _u8((12, 14, 4))), ("la8.png", _u8((12, 14, 2))), ("rgba16.png", _u16((12, 14, 4))),
     ("rgba8.tif", _u8((12, 14, 4))), ("rgba16.tif", _u16((12, 14, 4))), ("la8.tif", _u8((12, 14, 2)))],
)
def test_alpha_survives(tmp_path: Path, name: str, pixels: np.ndarray) -> None:
    src = tmp_path / name
    if name.endswith(".tif"):
        rgb = pixels.shape[2] == 4
        photometric = "rgb" if rgb else "minisblack"
        tifffile.imwrite(src, pixels, photometric=photometric, extrasamples=("unassalpha",))
    elif pixels.dtype == np.uint16:
        cv2.imwrite(str(src), pixels[..., [2, 1, 0, 3]])
    else:
        PILImage.fromarray(pixels).save(src)
    image = io.load(src)
    assert image.data.shape[2] == pixels.shape[2] - 1
    assert image.meta["alpha"].dtype == pixels.dtype and np.array_equal(image.meta["alpha"], pixels[..., -1])
    out = io.save(image, tmp_path / f"out_{name}")
    assert np.array_equal(_pixels(out), pixels)
    flat = io.load(io.save(image, tmp_path / "flat.jpg"))  # JPEG holds no alpha: dropped
    assert flat.data.shape[2] == pixels.shape[2] - 1 and flat.meta["alpha"] is None


@pytest.mark.parametrize("src_name, out_name", [
    ("a.jpg", "b.jpg"), ("a.png", "b.png"), ("a.jpg", "b.png"), ("a.webp", "b.webp"), ("a.png", "b.webp"),
])
def test_exif_and_icc_survive(tmp_path: Path, icc: bytes, exif: bytes, src_name: str, out_name: str) -> None:
    PILImage.fromarray(_u8((24, 32, 3))).save(tmp_path / src_name, icc_profile=icc, exif=exif)
    image = io.load(tmp_path / src_name)
    assert image.meta["icc_profile"] == icc and image.describe()["icc_profile"] and image.describe()["exif"]
    for out in (io.save(image, tmp_path / out_name), io.save(image.with_data(image.data, meta={
            **image.meta, "dtype": "uint16"}), tmp_path / f"16_{out_name}")):
        with PILImage.open(out) as im:
            assert im.info.get("icc_profile") == icc, out.name
            assert im.getexif().get(0x010F) == "QuietLens Test Camera", out.name
        assert io.load(out).meta["icc_profile"] == icc


def test_16bit_png_metadata_chunks_are_valid(tmp_path: Path, icc: bytes, exif: bytes) -> None:
    PILImage.fromarray(_u8((10, 10, 3))).save(tmp_path / "a.png", icc_profile=icc, exif=exif)
    image = io.load(tmp_path / "a.png")
    out = io.save(image.with_data(image.data, meta={**image.meta, "dtype": "uint16"}), tmp_path / "b.png")
    with PILImage.open(out) as im:
        im.verify()  # every chunk CRC
    reloaded = io.load(out)
    assert reloaded.meta["dtype"] == "uint16" and reloaded.meta["exif"] == image.meta["exif"]


def test_tiff_keeps_icc(tmp_path: Path, icc: bytes) -> None:
    PILImage.fromarray(_u8((10, 10, 3))).save(tmp_path / "a.png", icc_profile=icc)
    out = io.save(io.load(tmp_path / "a.png"), tmp_path / "b.tif")
    with tifffile.TiffFile(out) as tif:
        assert tif.pages.first.tags[34675].value == icc


def test_writing_clips_and_rounds(tmp_path: Path) -> None:
    data = np.array([[[-0.5, 0.5 / 255, 1.49 / 255], [1.51 / 255, 254.5 / 255, 7.0]]], np.float32)
    image = io.Image(data, "photo", "HWC", "png", meta={"dtype": "uint8"})
    assert _pixels(io.save(image, tmp_path / "c.png")).tolist() == [[[0, 0, 1], [2, 254, 255]]]


def test_unsupported_variants(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "cmyk.tif", _u8((8, 8, 4)), photometric="separated")
    tifffile.imwrite(tmp_path / "five.tif", _u8((8, 8, 5)), photometric="rgb", extrasamples=(0, 0))
    PILImage.new("CMYK", (8, 8)).save(tmp_path / "cmyk.jpg")
    for name in ("cmyk.tif", "five.tif", "cmyk.jpg"):
        with pytest.raises(UnsupportedFormatError) as err:
            io.load(tmp_path / name)
        assert name in str(err.value)


def _bad_inputs(srgb_pairs) -> dict[str, bytes]:
    png = srgb_pairs[0][0].read_bytes()
    jpeg = bytes_io.BytesIO()
    PILImage.fromarray(_u8((64, 64, 3))).save(jpeg, "JPEG")
    tiff = bytes_io.BytesIO()
    tifffile.imwrite(tiff, _u8((64, 64, 3)))
    return {
        "empty.png": b"",
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "truncated.tif": tiff.getvalue()[: len(tiff.getvalue()) // 2],
        "png_named.jpg": png,
        "random.png": RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "signature_only.png": png[:8] + RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "header_only.jpg": jpeg.getvalue()[:200],
    }


def test_bad_inputs_raise_typed_errors_naming_the_file(tmp_path: Path, srgb_pairs) -> None:
    for name, content in _bad_inputs(srgb_pairs).items():
        path = tmp_path / name
        path.write_bytes(content)
        try:
            image = io.load(path)
        except QuietLensError as err:
            assert name in str(err), str(err)
            assert not name.startswith("png_named"), str(err)
        else:
            assert name == "png_named.jpg", f"{name} loaded instead of failing"
            assert image.fmt == "png" and image.data.shape[2] == 3


def test_save_refuses_to_overwrite_the_source(tmp_path: Path, srgb_pairs) -> None:
    src = tmp_path / "src.png"
    src.write_bytes(srgb_pairs[0][0].read_bytes())
    image = io.load(src)
    before = src.read_bytes()
    with pytest.raises(OutputError):
        io.save(image, src, overwrite=True)
    assert src.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["src.png"]


def test_save_into_read_only_folder(read_only_dir: Path, srgb_pairs) -> None:
    image = io.load(srgb_pairs[0][0])
    with pytest.raises(OutputError):
        io.save(image, read_only_dir / "out.png")
    assert os.listdir(read_only_dir) == []


def test_failed_write_leaves_nothing_behind(tmp_path: Path, srgb_pairs, monkeypatch) -> None:
    image = io.load(srgb_pairs[0][0])

    def fail_half_way(img, path):
        Path(path).write_bytes(b"\x89PNG partial")
        raise PermissionError(13, "Permission denied")  # what a read-only volume reports

    monkeypatch.setattr(photo, "write", fail_half_way)
    with pytest.raises(OutputError):
        io.save(image, tmp_path / "out.png")
    assert os.listdir(tmp_path) == []
