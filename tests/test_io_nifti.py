"""NIfTI reading and writing on nibabel's real test images, and DICOM volumes saved as NIfTI."""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from quietlens.engine import io
from quietlens.engine.errors import CorruptFileError, OutputError, UnsupportedFormatError
from quietlens.engine.io import nifti

NIBABEL_DATA = Path(data_path)
# Header fields nifti.write may change (see its docstring); every other field must survive a round trip.
REWRITTEN_FIELDS = {"datatype", "bitpix", "scl_slope", "scl_inter"}


def header_differences(a, b) -> set[str]:
    differ = set()
    for key in a.keys():
        x, y = np.asarray(a[key]), np.asarray(b[key])
        if not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            differ.add(key)
    return differ


@pytest.mark.parametrize(
    "name, axes",
    [
        ("anatomical.nii", "ZHW"),  # big-endian int16
        ("example4d.nii.gz", "TZHW"),
        ("standard.nii.gz", "ZHW"),  # uint8, qform code 0
        ("reoriented_anat_moved.nii", "ZHW"),  # big-endian float32
        ("example_nifti2.nii.gz", "TZHW"),  # NIfTI-2
    ],
)
def test_round_trip_is_exact(name, axes, tmp_path):
    path = NIBABEL_DATA / name
    source = nib.load(path)
    image = io.load(path)
    assert (image.kind, image.axes, image.fmt) == ("mr", axes, "nifti")
    expected = source.get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(image.data, expected.transpose(tuple(reversed(range(expected.ndim)))))
    assert image.spacing == pytest.approx(source.header.get_zooms()[::-1])

    out = io.save(image, tmp_path / name)
    written = nib.load(out)
    back = io.load(out)
    np.testing.assert_array_equal(back.data, image.data)
    np.testing.assert_array_equal(written.affine, source.affine)
    assert written.header.get_zooms() == source.header.get_zooms()
    assert written.get_data_dtype() == source.get_data_dtype()  # integer values stay in their type
    assert header_differences(source.header, written.header) == set()


def test_fractional_values_on_an_integer_type_become_float32(tmp_path):
    image = io.load(NIBABEL_DATA / "example4d.nii.gz")  # int16 on disk
    halved = image.with_data(image.data / 2)
    written = nib.load(io.save(halved, tmp_path / "half.nii.gz"))
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(io.load(tmp_path / "half.nii.gz").data, halved.data)
    source = nib.load(NIBABEL_DATA / "example4d.nii.gz")
    assert header_differences(source.header, written.header) <= REWRITTEN_FIELDS
    np.testing.assert_array_equal(written.affine, source.affine)


def test_output_dtype_rule():
    ints = np.array([0.0, 3.0, -7.0], np.float32)
    assert nifti.output_dtype(ints, np.dtype(np.int16)) == np.int16
    assert nifti.output_dtype(ints, np.dtype(np.uint8)) == np.float32  # -7 does not fit
    assert nifti.output_dtype(ints + 0.5, np.dtype(np.int16)) == np.float32
    assert nifti.output_dtype(ints, np.dtype(np.float64)) == np.float64


def test_dicom_series_saved_as_nifti(mr_series_dir, tmp_path):
    series = io.load(mr_series_dir)
    out = io.save(series, tmp_path / "series.nii.gz")
    written = nib.load(out)
    assert written.shape == (64, 64, 40)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 1)
    back = io.load(out)
    assert back.axes == "ZHW"
    np.testing.assert_array_equal(back.data, series.data)

    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    datasets = series.meta["datasets"]
    first, last = (np.asarray(ds.ImagePositionPatient, float) for ds in (datasets[0], datasets[-1]))
    to_world = written.affine
    np.testing.assert_allclose(nib.affines.apply_affine(to_world, [0, 0, 0]), first * lps_to_ras, atol=1e-4)
    np.testing.assert_allclose(nib.affines.apply_affine(to_world, [0, 0, 39]), last * lps_to_ras, atol=1e-3)
    # One step along a row (next column) moves along the row direction cosine by the column spacing.
    row_cosine = np.asarray(datasets[0].ImageOrientationPatient[:3], float)
    np.testing.assert_allclose(written.affine[:3, 0], row_cosine * 3.0 * lps_to_ras, atol=1e-5)
    np.testing.assert_allclose(written.header.get_zooms(), (3.0, 3.0, 3.0), atol=1e-5)


def test_ct_slice_saved_as_nifti(pydicom_ct, tmp_path):
    image = io.load(pydicom_ct)
    back = io.load(io.save(image, tmp_path / "ct.nii"))
    assert back.axes == "HW"
    np.testing.assert_array_equal(back.data, image.data)


def test_nifti_cannot_be_written_as_dicom(tmp_path):
    image = io.load(NIBABEL_DATA / "anatomical.nii")
    with pytest.raises(UnsupportedFormatError, match="NIfTI"):
        io.save(image, tmp_path / "anatomical.dcm")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["truncated.nii.gz", "truncated.nii"])
def test_truncated_file_is_corrupt(name, tmp_path):
    data = (NIBABEL_DATA / "example4d.nii.gz").read_bytes()
    if name.endswith(".nii"):
        data = gzip.decompress(data)
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError) as caught:
        io.load(path)
    assert str(path) in str(caught.value)


def test_read_only_folder_is_an_output_error(read_only_dir):
    image = io.load(NIBABEL_DATA / "standard.nii.gz")
    with pytest.raises(OutputError, match="locked"):
        io.save(image, read_only_dir / "out.nii.gz")
    assert not list(read_only_dir.iterdir())
