"""DICOM reading and derived-series writing, on a real 40-slice MR series and pydicom's own test files."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import MPEG2MPML

from quietlens.engine import io
from quietlens.engine.errors import (
    CorruptFileError,
    OutputError,
    QuietLensError,
    SeriesError,
    UnsupportedFormatError,
)


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


def slice_positions(datasets) -> np.ndarray:
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return np.array([np.dot(normal, np.asarray(ds.ImagePositionPatient, float)) for ds in datasets])


@pytest.fixture(scope="module")
def mr_series(mr_series_dir: Path):
    return io.load(mr_series_dir)


@pytest.fixture(scope="module")
def written_series(mr_series, tmp_path_factory) -> Path:
    """The MR series with altered pixels, saved as a derived series folder."""
    out = tmp_path_factory.mktemp("derived") / "denoised"
    io.save(mr_series.with_data(mr_series.data * 0.9 + 0.3), out)
    return out


# --- the real MR series -------------------------------------------------------------------------


def test_series_loads_as_sorted_volume(mr_series):
    assert (mr_series.kind, mr_series.axes, mr_series.fmt) == ("mr", "ZHW", "dicom")
    assert mr_series.data.shape == (40, 64, 64) and mr_series.data.dtype == np.float32
    datasets = mr_series.meta["datasets"]
    assert all(isinstance(ds, pydicom.Dataset) and "PixelData" not in ds for ds in datasets)
    assert np.all(np.diff(slice_positions(datasets)) > 0)
    first = pydicom.dcmread(datasets[0].filename)
    np.testing.assert_array_equal(mr_series.data[0], first.pixel_array.astype(np.float32))
    assert mr_series.spacing == pytest.approx((3.0, 3.0, 3.0), abs=1e-5)
    assert mr_series.window == (5818.5, 11637.0)
    summary = mr_series.meta["summary"]
    assert summary["modality"] == "MR" and summary["slices"] == 40
    text = repr(summary)
    for keyword in ("PatientName", "PatientID"):
        value = str(datasets[0].get(keyword, ""))
        assert not value or value not in text


def test_file_order_does_not_matter(mr_series, mr_series_dir, tmp_path):
    files = sorted(mr_series_dir.iterdir())
    for i, f in enumerate(files):  # names now run against the slice order
        shutil.copy(f, tmp_path / f"{len(files) - i:04d}.dcm")
    (tmp_path / "notes.txt").write_text("not an image\n")
    shutil.copy(pydicom_file("DICOMDIR"), tmp_path / "DICOMDIR")
    shuffled = io.load(tmp_path)
    np.testing.assert_array_equal(shuffled.data, mr_series.data)
    assert shuffled.spacing == mr_series.spacing


def test_series_written_as_derived_folder(mr_series, written_series):
    names = sorted(p.name for p in written_series.iterdir())
    assert names == [f"IM{i:05d}.dcm" for i in range(1, 41)]
    back = io.load(written_series)
    # Stored as the source's int16 with slope 1: only rounding to integers differs.
    assert np.abs(back.data - (mr_series.data * 0.9 + 0.3)).max() <= 0.5 + 1e-3

    source = mr_series.meta["datasets"]
    written = [pydicom.dcmread(written_series / n) for n in names]
    assert {ds.SeriesInstanceUID for ds in written} == {written[0].SeriesInstanceUID}
    assert written[0].SeriesInstanceUID != source[0].SeriesInstanceUID
    sops = [ds.SOPInstanceUID for ds in written]
    assert len(set(sops)) == 40 and not set(sops) & {ds.SOPInstanceUID for ds in source}
    for src, ds in zip(source, written):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] + list(src.ImageType)[2:]
        assert ds.SeriesDescription == src.SeriesDescription  # rewritten, but not by a method: no label
        assert ds.DerivationDescription
        for keyword in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "PixelSpacing",
                        "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber"):
            assert ds.get(keyword) == src.get(keyword), keyword
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
    with open(written_series / names[0], "rb") as f:
        assert f.read(132)[128:] == b"DICM"


def test_dcmdump_accepts_written_files(written_series):
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmdump (DCMTK) is not installed")
    for name in ("IM00001.dcm", "IM00040.dcm"):
        run = subprocess.run(["dcmdump", str(written_series / name)], capture_output=True, text=True)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("E:")]
        assert run.returncode == 0 and not errors, errors


def test_series_to_one_file_is_refused(mr_series, tmp_path):
    with pytest.raises(UnsupportedFormatError, match="folder"):
        io.save(mr_series, tmp_path / "all.dcm")
    assert not list(tmp_path.iterdir())


def test_read_only_folder_is_an_output_error(mr_series, read_only_dir):
    with pytest.raises(OutputError, match="locked"):
        io.save(mr_series, read_only_dir / "out")
    assert not list(read_only_dir.iterdir())


# --- pydicom's test files -----------------------------------------------------------------------


def test_ct_in_hounsfield_units_and_written_back(pydicom_ct, tmp_path):
    image = io.load(pydicom_ct)
    ds = pydicom.dcmread(pydicom_ct)
    assert (image.kind, image.axes) == ("ct", "HW")
    np.testing.assert_array_equal(image.data, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    assert image.spacing == pytest.approx((float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])))

    out = io.save(image.with_data(image.data + 0.2), tmp_path / "ct.dcm")
    written = pydicom.dcmread(out)
    assert (written.RescaleSlope, written.RescaleIntercept) == (ds.RescaleSlope, ds.RescaleIntercept)
    assert written.pixel_array.dtype == np.int16
    hu = apply_modality_lut(written.pixel_array, written)
    assert np.abs(hu - (image.data + 0.2)).max() <= float(ds.RescaleSlope) / 2 + 1e-3
    assert io.load(out).axes == "HW"


def test_file_without_preamble(pydicom_ct, tmp_path):
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(pydicom_ct.read_bytes()[132:])  # drop the 128-byte preamble and "DICM"
    np.testing.assert_array_equal(io.load(bare).data, io.load(pydicom_ct).data)


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
     "MR_small_bigendian.dcm", "MR_small_implicit.dcm"],
)
def test_encoded_variants_decode_like_the_uncompressed_file(name, tmp_path):
    reference = io.load(pydicom_file("MR_small.dcm"))
    image = io.load(pydicom_file(name))
    assert (image.kind, image.axes) == ("mr", "HW")
    np.testing.assert_array_equal(image.data, reference.data)
    out = io.save(image, tmp_path / "out.dcm")  # written back uncompressed, little endian
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(io.load(out).data, reference.data)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPEG-LL.dcm"])
def test_jpeg_files_match_pydicom(name):
    path = pydicom_file(name)
    ds = pydicom.dcmread(path)
    image = io.load(path)
    np.testing.assert_array_equal(image.data, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_multiframe_file(name, tmp_path):
    reference = pydicom.dcmread(pydicom_file("emri_small.dcm")).pixel_array.astype(np.float32)
    image = io.load(pydicom_file(name))
    assert image.axes == "ZHW" and image.meta["multiframe"]
    np.testing.assert_array_equal(image.data, reference)

    out = io.save(image, tmp_path / "frames.dcm")
    written = pydicom.dcmread(out)
    assert int(written.NumberOfFrames) == 10
    np.testing.assert_array_equal(io.load(out).data, reference)
    folder = io.save(image, tmp_path / "series")
    assert [p.name for p in folder.iterdir()] == ["IM00001.dcm"]


def test_values_beyond_bits_stored_widen_bits_stored(tmp_path):
    image = io.load(pydicom_file("emri_small.dcm"))  # uint16 with BitsStored 12
    brighter = image.with_data(image.data * 20 - 100)
    written = pydicom.dcmread(io.save(brighter, tmp_path / "bright.dcm"))
    assert (written.BitsStored, written.HighBit, written.PixelRepresentation) == (16, 15, 0)
    expected = np.clip(np.rint(brighter.data), 0, 65535)  # unsigned storage clips below zero
    np.testing.assert_array_equal(written.pixel_array, expected)


def test_colour_and_undecodable_files_are_unsupported(tmp_path):
    with pytest.raises(UnsupportedFormatError, match="RGB"):
        io.load(pydicom_file("SC_rgb_jpeg_gdcm.dcm"))
    # 12-bit JPEG Extended: no installed decoder accepts this file.
    with pytest.raises(UnsupportedFormatError, match="JPEG Extended"):
        io.load(pydicom_file("JPEG-lossy.dcm"))
    ds = pydicom.dcmread(pydicom_file("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # encapsulated data under a syntax nothing decodes
    ds.save_as(tmp_path / "video.dcm", enforce_file_format=True)
    with pytest.raises(UnsupportedFormatError, match="MPEG2"):
        io.load(tmp_path / "video.dcm")


# --- damaged input ------------------------------------------------------------------------------


# Each maker returns (what to open, the path the error must name).


def _empty_file(tmp: Path, series: Path) -> tuple[Path, Path]:
    (tmp / "empty.dcm").touch()
    return tmp / "empty.dcm", tmp / "empty.dcm"


def _truncated_header(tmp: Path, series: Path) -> tuple[Path, Path]:
    (tmp / "cut.dcm").write_bytes(pydicom_file("CT_small.dcm").read_bytes()[:1000])
    return tmp / "cut.dcm", tmp / "cut.dcm"


def _truncated_pixels(tmp: Path, series: Path) -> tuple[Path, Path]:
    data = pydicom_file("CT_small.dcm").read_bytes()
    (tmp / "cut.dcm").write_bytes(data[: len(data) - 5000])
    return tmp / "cut.dcm", tmp / "cut.dcm"


def _two_series(tmp: Path, series: Path) -> tuple[Path, Path]:
    for f in sorted(series.iterdir())[:3]:
        shutil.copy(f, tmp / f.name)
    shutil.copy(pydicom_file("CT_small.dcm"), tmp / "ct.dcm")
    return tmp, tmp


def _empty_folder(tmp: Path, series: Path) -> tuple[Path, Path]:
    return tmp, tmp


def _text_folder(tmp: Path, series: Path) -> tuple[Path, Path]:
    for i in range(3):
        (tmp / f"note{i}.txt").write_text("slice notes\n" * 20)
    return tmp, tmp


def _series_with_cut_slice(size: int):
    def make(tmp: Path, series: Path) -> tuple[Path, Path]:
        for f in sorted(series.iterdir())[:5]:
            data = f.read_bytes()
            (tmp / f.name).write_bytes(data[:size] if f.name == "0003.dcm" else data)
        return tmp, tmp / "0003.dcm"

    return make


@pytest.mark.parametrize(
    "make, error, match",
    [
        (_empty_file, CorruptFileError, "empty"),
        (_truncated_header, CorruptFileError, "no pixel data"),
        (_truncated_pixels, CorruptFileError, "pixel data"),
        (_two_series, SeriesError, "holds 2 series"),
        (_empty_folder, SeriesError, "no DICOM images"),
        (_text_folder, SeriesError, "no DICOM images"),
        (_series_with_cut_slice(2000), CorruptFileError, "truncated"),
        (_series_with_cut_slice(20000), CorruptFileError, "pixel data"),
    ],
)
def test_bad_input_gives_a_typed_error_naming_the_path(make, error, match, tmp_path, mr_series_dir):
    opened, named = make(tmp_path, mr_series_dir)
    with pytest.raises(QuietLensError) as caught:
        io.load(opened)
    assert type(caught.value) is error
    assert match in str(caught.value)
    assert str(named) in str(caught.value)
