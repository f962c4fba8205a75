"""NIfTI-1/-2 (``.nii``, ``.nii.gz``) through nibabel.

NIfTI stores no modality, so every NIfTI image is given kind ``mr`` (scanner units after scl_slope /
scl_inter). Arrays are transposed from the file's ``x, y, z[, t]`` to ``[T,] Z, H, W`` on load and back
on save; the affine in ``meta`` stays the file's own.

Writing back keeps the header (including qform/sform and their codes) with these documented changes:
a float on-disk type is kept; an integer on-disk type is kept only when every value is an integer in its
range, otherwise the data is written as float32. In both cases the values are written unscaled, so
``scl_slope``/``scl_inter`` (and ``datatype``/``bitpix`` when the type changes) may differ from the source.
An image that carries ``meta['provenance']`` (a pipeline result) also gets a short provenance line in
``descrip`` and the full record in a JSON comment extension; a plain load and save leaves both alone.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import __version__
from ..errors import CorruptFileError, QuietLensError, UnsupportedFormatError
from ..image import Image
from . import dicom
from .limits import check_file_holds, check_pixels
from .provenance import provenance_text

AXES = {2: "HW", 3: "ZHW", 4: "TZHW"}


def load(path: Path) -> Image:
    """Read a ``.nii``/``.nii.gz`` file into an ``HW``, ``ZHW`` or ``TZHW`` image of real values."""
    path = Path(path)
    try:
        img = nib.load(path)
        if not isinstance(img, nib.Nifti1Pair):  # nibabel also opens CIFTI, MGH, ... by content
            raise UnsupportedFormatError(f"is a {type(img).__name__}, not a NIfTI image", path)
        _check_declared(img, path)
        data = img.get_fdata(dtype=np.float32)
    except QuietLensError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"cannot be read as NIfTI: {exc}", path) from exc
    if data.ndim not in AXES:
        raise UnsupportedFormatError(f"{data.ndim}-D NIfTI images are not supported (2-D to 4-D only)", path)
    header = img.header.copy()
    zooms = tuple(float(z) for z in header.get_zooms()[: data.ndim])
    # nibabel moves scl_slope/scl_inter from the loaded header onto the data proxy.
    slope, intercept = (float(v) for v in (img.dataobj.slope, img.dataobj.inter))
    summary = {
        "format": "NIfTI-2" if isinstance(header, nib.Nifti2Header) else "NIfTI-1",
        "on_disk_dtype": str(header.get_data_dtype()),
        "voxel_size": list(zooms),
        "spatial_unit": header.get_xyzt_units()[0],
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "scl_slope": slope,
        "scl_inter": intercept,
    }
    data = data.transpose(tuple(reversed(range(data.ndim))))
    return Image(
        data=data,
        kind="mr",
        axes=AXES[data.ndim],
        fmt="nifti",
        source=path,
        spacing=zooms[::-1],
        window=_window(header, data),
        meta={
            "header": header,
            "affine": img.affine.copy(),
            "on_disk_dtype": str(header.get_data_dtype()),
            "summary": summary,
        },
    )


def _check_declared(img, path: Path) -> None:
    """Refuse what the header declares before reading a voxel: complex or structured (RGB) voxels, an
    empty or too large shape, more voxel bytes than the (possibly gzipped) file can hold."""
    dtype = img.get_data_dtype()
    if dtype.kind == "c":
        raise UnsupportedFormatError(f"complex-valued NIfTI ({dtype}) is not supported; save magnitude "
                                     "(or real and imaginary parts) as real-valued images", path)
    if dtype.kind not in "biuf":
        raise UnsupportedFormatError(f"NIfTI voxels of type {dtype} are not supported (only real numbers)", path)
    if 0 in img.shape:
        raise CorruptFileError(f"the image has a zero-length dimension (shape {img.shape}): no voxels", path)
    check_pixels(img.shape, path, bytes_per_pixel=dtype.itemsize + 4)  # read as stored, returned as float32
    data_file = Path(img.file_map["image"].filename)
    with open(data_file, "rb") as f:
        deflated = f.read(2) == b"\x1f\x8b"
    declared = int(np.prod(img.shape, dtype=np.int64)) * dtype.itemsize
    check_file_holds(declared, data_file, start=int(img.dataobj.offset), deflated=deflated)


def _window(header, data: np.ndarray) -> tuple[float, float]:
    lo, hi = float(header["cal_min"]), float(header["cal_max"])
    if hi > lo:
        return (lo + hi) / 2, hi - lo
    return dicom.robust_window(data)


def write(image: Image, path: Path) -> None:
    """Write ``image`` as NIfTI: a NIfTI source keeps its header; DICOM gets an affine from its geometry."""
    data = image.data.transpose(tuple(reversed(range(image.data.ndim))))
    if image.fmt == "nifti":
        header = image.meta["header"].copy()
        dtype = output_dtype(data, header.get_data_dtype())
        header.set_data_dtype(dtype)
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        # Passing the header's own affine leaves its qform/sform fields and codes untouched.
        img = cls(data.astype(dtype), image.meta["affine"], header)
    elif image.fmt == "dicom" and image.axes in ("HW", "ZHW"):
        # DICOM patient space is LPS, NIfTI world space is RAS: negate x and y.
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ dicom.affine_lps(image)
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)  # 1 = scanner-based anatomical coordinates
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
    else:
        raise UnsupportedFormatError(f"a {image.fmt} {image.axes} image cannot be written as NIfTI", path)
    if image.meta.get("provenance"):
        _stamp(img.header, image)
    nib.save(img, str(path))


def _stamp(header, image: Image) -> None:
    """Provenance: a short line in ``descrip`` (80 bytes) and the full record as a JSON comment extension."""
    prov = image.meta["provenance"]
    line = f"QuietLens {prov.get('version') or __version__} {prov.get('method') or ''}".strip()
    if prov.get("model_sha256"):
        line += f" model {prov['model_sha256'][:16]}"
    header["descrip"] = line.encode("ascii", "replace")[:79]
    record = {"provenance": prov, "description": provenance_text(image)}
    header.extensions.append(nib.nifti1.Nifti1Extension("comment", json.dumps(record).encode("utf-8")))


def output_dtype(data: np.ndarray, on_disk: np.dtype) -> np.dtype:
    """The on-disk type to write: a float type is kept, an integer type only if it holds the values."""
    on_disk = np.dtype(on_disk)
    if on_disk.kind == "f":
        return on_disk
    if on_disk.kind in "iu" and data.size and np.isfinite(data).all():
        info = np.iinfo(on_disk)
        if data.min() >= info.min and data.max() <= info.max and np.array_equal(data, np.rint(data)):
            return on_disk
    return np.dtype(np.float32)
