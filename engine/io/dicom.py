"""DICOM: one file (single- or multi-frame) or a folder holding one series, read and written with pydicom.

Pixels are returned as real values (RescaleSlope/Intercept applied; CT in HU). ``meta`` keeps what is
needed to write a derived series back:

* ``datasets``: the per-file pydicom datasets without *Pixel Data*, in slice order;
* ``multiframe``: whether the volume came from one multi-frame file;
* ``stored_dtype``, ``bits_allocated``, ``pixel_representation``: how the pixels were stored;
* ``summary``: patient-neutral facts for display (no names or IDs).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
    generate_uid,
)

from .. import __version__
from ..errors import CorruptFileError, InvalidImageError, OutputError, SeriesError, UnsupportedFormatError
from ..image import Image
from .formats import DICOM_SUFFIXES
from .limits import check_pixels
from .provenance import STAMPS, provenance_text

KINDS = {"CT": "ct", "MR": "mr"}
DERIVED_SUFFIX = " (QuietLens denoised)"
# Type 3 tags whose values would no longer describe the rewritten pixels.
STALE_PIXEL_TAGS = (
    "SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
)
# How far the distance between neighbouring slices may stray from the series' median before the series
# counts as unevenly spaced (a missing slice doubles it); real series vary far less.
SPACING_TOLERANCE = 0.1


def load(path: Path) -> Image:
    """Read a DICOM file, or a folder holding exactly one series, into a ``HW`` or ``ZHW`` image."""
    path = Path(path)
    if not path.is_dir():
        ds = _read(path)
        if ds is None:
            raise CorruptFileError("is not a readable DICOM file", path)
        return _image([ds], [path], path)
    found = []
    for f in sorted(path.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue  # hidden files (e.g. .DS_Store) and subfolders are not slices
        _check_slice_file(f)
        ds = _read(f)
        if ds is None and f.suffix.lower() in DICOM_SUFFIXES:
            raise CorruptFileError("is not a readable DICOM file; refusing a series with a damaged slice", f)
        if _is_image(ds):
            found.append((f, ds))
    if not found:
        raise SeriesError("no DICOM images in the folder", path)
    series: dict[str, list] = {}
    for f, ds in found:
        if not ds.get("SeriesInstanceUID"):  # every DICOM instance has one; a cut header loses it
            raise CorruptFileError("has no Series Instance UID (the file is truncated or damaged)", f)
        series.setdefault(ds.SeriesInstanceUID, []).append((f, ds))
    if len(series) > 1:
        names = "; ".join(_series_name(members) for members in series.values())
        raise SeriesError(
            f"the folder holds {len(series)} series: {names}; open one series per folder", path
        )
    files, datasets = [f for f, _ in found], [ds for _, ds in found]
    if len(datasets) > 1 and any(_frames(ds) > 1 for ds in datasets):
        raise SeriesError(
            "the folder mixes multi-frame files in one series; open the files one by one", path
        )
    order = _slice_order(datasets, path)
    return _image([datasets[i] for i in order], [files[i] for i in order], path)


def _check_slice_file(f: Path) -> None:
    """Refuse an empty file that would be a slice (a DICOM suffix, or none as many series use): dropping
    it would close a gap in the volume that the output's geometry could not show."""
    if f.stat().st_size == 0 and (f.suffix.lower() in DICOM_SUFFIXES or not f.suffix):
        raise CorruptFileError("the file is empty; refusing a series with a missing slice", f)


def _read(path: Path) -> Dataset | None:
    """The dataset in ``path``, or None when the file is not DICOM at all (e.g. a text file)."""
    try:
        try:
            ds = pydicom.dcmread(path, force=False)
        except InvalidDicomError:
            # No preamble: accept it only if it starts like a File Meta (0002) or an Identifying
            # (0008) group element, so that arbitrary files are not parsed as garbage tags.
            with open(path, "rb") as f:
                if f.read(2) not in (b"\x02\x00", b"\x08\x00"):
                    return None
            ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise CorruptFileError(f"cannot be read as DICOM: {exc}", path) from exc
    if "TransferSyntaxUID" not in ds.file_meta:  # bare dataset: its encoding is the transfer syntax
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit
            else ExplicitVRLittleEndian if little
            else ExplicitVRBigEndian
        )
    return ds


def _is_image(ds: Dataset | None) -> bool:
    """True for a DICOM file that belongs to a series (not a DICOMDIR index)."""
    if ds is None:
        return False
    return ds.file_meta.get("MediaStorageSOPClassUID") != MediaStorageDirectoryStorage and (
        "DirectoryRecordSequence" not in ds
    )


def _series_name(members: list) -> str:
    ds = members[0][1]
    parts = (ds.get("SeriesNumber"), ds.get("SeriesDescription"))
    label = " ".join(str(v) for v in parts if v not in (None, ""))
    return f"{label or ds.get('SeriesInstanceUID', 'unnamed')} ({len(members)} files)"


def _frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames") or 1)


def _get(ds: Dataset, keyword: str):
    """A tag's value at the top level or in the shared functional groups of an enhanced multi-frame file."""
    if keyword in ds:
        return ds[keyword].value
    for group in ds.get("SharedFunctionalGroupsSequence", [])[:1]:
        for elem in group:
            if elem.VR == "SQ" and elem.value and keyword in elem.value[0]:
                return elem.value[0][keyword].value
    return None


def _normal(ds: Dataset) -> np.ndarray | None:
    iop = _get(ds, "ImageOrientationPatient")
    if not iop or len(iop) != 6:
        return None
    return np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))


def _positions(datasets: list[Dataset], multiframe: bool) -> np.ndarray | None:
    """Each slice's ImagePositionPatient (Z, 3) in file order, or None when any is missing."""
    if multiframe:
        ds = datasets[0]
        frames = ds.get("PerFrameFunctionalGroupsSequence")
        try:
            found = [f.PlanePositionSequence[0].ImagePositionPatient for f in frames] if frames else []
        except (AttributeError, IndexError):
            found = []
        if len(found) != _frames(ds):
            return None
    else:
        found = [ds.get("ImagePositionPatient") for ds in datasets]
    if not all(p and len(p) == 3 for p in found):
        return None
    return np.asarray(found, float)


def _slice_order(datasets: list[Dataset], folder: Path) -> list[int]:
    """Indices sorting the slices along the slice normal, or by InstanceNumber without geometry."""
    normal = _normal(datasets[0])
    positions = _positions(datasets, multiframe=False)
    if normal is None or positions is None:
        return sorted(range(len(datasets)), key=lambda i: int(datasets[i].get("InstanceNumber") or 0))
    keys = positions @ normal
    repeats = len(keys) - len(np.unique(np.round(keys, 3)))
    if repeats:
        raise SeriesError(
            f"{repeats} slices repeat a position already taken (several echoes or time points?); "
            "open one volume per folder",
            folder,
        )
    return list(np.argsort(keys, kind="stable"))


def _rescale(ds: Dataset) -> tuple[float, float]:
    slope, intercept = _get(ds, "RescaleSlope"), _get(ds, "RescaleIntercept")
    return float(1.0 if slope in (None, "") else slope), float(0.0 if intercept in (None, "") else intercept)


def _pixels(ds: Dataset, path: Path) -> np.ndarray:
    """The stored pixels of one file as (frames, rows, columns), checked and decoded."""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise UnsupportedFormatError("floating-point DICOM pixel data is not supported", path)
    if "PixelData" not in ds:
        raise CorruptFileError("has no pixel data (the file is truncated or holds no image)", path)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedFormatError(
            f"only grayscale (MONOCHROME) DICOM images are supported, not {photometric or 'unknown'}", path
        )
    if ds.get("BitsAllocated") not in (8, 16, 32):
        raise UnsupportedFormatError(f"{ds.get('BitsAllocated')}-bit DICOM pixel data is not supported", path)
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_compressed:  # decoders allocate what the header declares: check it against the data
        declared = _frames(ds) * int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) \
            * int(ds.BitsAllocated) // 8
        if declared > len(ds.PixelData):
            raise CorruptFileError(f"the header declares {declared:,} bytes of pixel data, the file holds "
                                   f"{len(ds.PixelData):,} (truncated or damaged)", path)
    if syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise UnsupportedFormatError(
                f"no installed decoder handles the transfer syntax {syntax.name} ({syntax})", path
            )
    try:
        arr = ds.pixel_array
    except Exception as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        if syntax.is_compressed:  # a decoder exists but rejects this variant of the codec (or damaged data)
            raise UnsupportedFormatError(
                f"the {syntax.name} pixel data cannot be decoded: {reason}", path
            ) from exc
        raise CorruptFileError(f"the pixel data cannot be read: {reason}", path) from exc
    return arr.reshape(_frames(ds), ds.Rows, ds.Columns)


def _image(datasets: list[Dataset], files: list[Path], source: Path) -> Image:
    first = datasets[0]
    multiframe = _frames(first) > 1
    # Decoders allocate what the headers declare: refuse an absurd total before decoding anything.
    # Each pixel is held stored, as float64 while rescaled and as float32 (twice while stacked).
    check_pixels((sum(_frames(ds) for ds in datasets), max(int(ds.get("Rows") or 0) for ds in datasets),
                  max(int(ds.get("Columns") or 0) for ds in datasets)), source, bytes_per_pixel=16)
    planes = []
    for ds, f in zip(datasets, files):
        slope, intercept = _rescale(ds)  # may differ per slice (e.g. PET), so apply per file
        planes.append((_pixels(ds, f).astype(np.float64) * slope + intercept).astype(np.float32))
    sizes = sorted({p.shape[1:] for p in planes})
    if len(sizes) > 1:
        shown = ", ".join(f"{rows}×{cols}" for rows, cols in sizes)
        raise SeriesError(f"the slices have different sizes ({shown})", source)
    data = np.concatenate(planes)
    stored_dtype = np.dtype(f"{'i' if first.get('PixelRepresentation') else 'u'}{first.BitsAllocated // 8}")
    for ds in datasets:
        del ds.PixelData  # the pixels live in ``data``; keep only the header for write-back
    volume = data.shape[0] > 1
    if not volume:
        data = data[0]
    spacing = _spacing(datasets, multiframe, volume)
    window = _window(first, data)
    syntax = first.file_meta.TransferSyntaxUID
    slope, intercept = _rescale(first)
    summary = {
        "modality": str(first.get("Modality", "")),
        "manufacturer": str(first.get("Manufacturer", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "slices": int(data.shape[0]) if volume else 1,
        "spacing": [float(s) for s in spacing] if spacing else None,
        "transfer_syntax": syntax.name,
        "photometric": str(first.PhotometricInterpretation),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
    }
    return Image(
        data=data,
        kind=KINDS.get(summary["modality"], "medical"),
        axes="ZHW" if volume else "HW",
        fmt="dicom",
        source=source,
        spacing=spacing,
        window=window,
        meta={
            "datasets": datasets,
            "multiframe": multiframe,
            "stored_dtype": stored_dtype.name,
            "bits_allocated": int(first.BitsAllocated),
            "pixel_representation": int(first.get("PixelRepresentation", 0)),
            "summary": summary,
        },
    )


def _spacing(datasets: list[Dataset], multiframe: bool, volume: bool) -> tuple[float, ...] | None:
    """(row, col) pixel spacing, preceded by the slice spacing for a volume; None without PixelSpacing."""
    pixel = _get(datasets[0], "PixelSpacing") or _get(datasets[0], "ImagerPixelSpacing")
    if not pixel or len(pixel) != 2:
        return None
    inplane = (float(pixel[0]), float(pixel[1]))
    if not volume:
        return inplane
    positions = _positions(datasets, multiframe)
    if positions is not None:
        step = float(np.median(np.linalg.norm(np.diff(positions, axis=0), axis=1)))
    else:
        first = datasets[0]
        step = float(_get(first, "SpacingBetweenSlices") or _get(first, "SliceThickness") or 1.0)
    return (step,) + inplane


def _window(ds: Dataset, data: np.ndarray) -> tuple[float, float]:
    centre, width = _get(ds, "WindowCenter"), _get(ds, "WindowWidth")
    if centre not in (None, "") and width not in (None, "") and _first(width) > 0:
        return _first(centre), _first(width)
    return robust_window(data)


def _first(value) -> float:
    """The first of a possibly multi-valued number (WindowCenter may list several windows)."""
    return float(value[0] if isinstance(value, MultiValue) else value)


def robust_window(data: np.ndarray) -> tuple[float, float]:
    """(centre, width) spanning the 0.5–99.5 percentiles, on a subsample so large volumes stay fast."""
    flat = data.ravel()
    sample = flat[:: max(1, flat.size // 1_000_000)]
    sample = sample[np.isfinite(sample)]
    if not sample.size:
        return 0.0, 1.0
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return float(lo + hi) / 2, max(float(hi - lo), 1e-6)


def affine_lps(image: Image) -> np.ndarray:
    """4×4 matrix mapping (column, row, slice) indices of a DICOM-loaded image to patient LPS mm."""
    datasets = image.meta["datasets"]
    first = datasets[0]
    orientation, pixel = _get(first, "ImageOrientationPatient"), _get(first, "PixelSpacing")
    positions = _positions(datasets, image.meta["multiframe"])
    if positions is None and _get(first, "ImagePositionPatient"):
        positions = np.asarray([_get(first, "ImagePositionPatient")], float)
    if not orientation or not pixel or positions is None:
        raise UnsupportedFormatError(
            "the DICOM image has no patient position, orientation or pixel spacing to place it in space",
            image.source,
        )
    row_cos, col_cos = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    affine = np.eye(4)
    affine[:3, 0] = row_cos * float(pixel[1])  # along a row = increasing column, spaced by column spacing
    affine[:3, 1] = col_cos * float(pixel[0])
    if len(positions) > 1:
        _check_even_spacing(positions, image.source)
        affine[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)  # keeps gantry tilt
    else:
        if image.is_volume and image.spacing:
            step = image.spacing[0]
        else:
            step = float(_get(first, "SliceThickness") or 1.0)
        affine[:3, 2] = np.cross(row_cos, col_cos) * step
    affine[:3, 3] = positions[0]
    return affine


def _check_even_spacing(positions: np.ndarray, source: Path | None) -> None:
    """Refuse slices that are not evenly spaced (e.g. a missing slice): one affine cannot place them."""
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    typical = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - typical)))
    if abs(steps[worst] - typical) > SPACING_TOLERANCE * typical + 1e-3:
        raise UnsupportedFormatError(
            f"the slices are unevenly spaced ({steps[worst]:.3g} mm between slices {worst + 1} and {worst + 2}, "
            f"{typical:.3g} mm elsewhere: a missing slice?); one affine cannot place them, save as DICOM instead",
            source,
        )


def check_written_series(folder: Path) -> None:
    """Raise :class:`OutputError` unless ``folder`` holds only DICOM files of one series that QuietLens
    wrote (DerivationDescription starts with its stamp): the only folder an overwrite may replace."""
    strangers, series = [], set()
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise OutputError(f"cannot be read ({exc.strerror or exc})", folder) from exc
    for entry in entries:
        if entry.is_symlink() or not entry.is_file():
            strangers.append(f"{entry.name}{'/' if entry.is_dir() else ''} (not a DICOM file)")
            continue
        try:
            ds = pydicom.dcmread(entry, stop_before_pixels=True)
        except Exception:
            strangers.append(f"{entry.name} (not a DICOM file)")
            continue
        if not str(ds.get("DerivationDescription", "")).startswith(STAMPS):
            strangers.append(f"{entry.name} (a DICOM file QuietLens did not write)")
        series.add(str(ds.get("SeriesInstanceUID", "")))
    if len(series) > 1:
        strangers.append(f"files of {len(series)} different series")
    if strangers:
        shown = ", ".join(strangers[:3]) + (f" and {len(strangers) - 3} more" if len(strangers) > 3 else "")
        raise OutputError(f"refusing to replace a folder QuietLens did not write: it holds {shown}", folder)


def write(image: Image, path: Path) -> None:
    """Write a derived DICOM: ``.dcm`` = one file, no suffix = a folder with one file per instance.

    New SeriesInstanceUID and SOPInstanceUIDs, ImageType DERIVED\\SECONDARY, pixels stored uncompressed
    (Explicit VR Little Endian) in the original integer type with each file's original rescale.
    A multi-frame source stays one multi-frame file (inside the folder when no suffix is given).
    """
    path = Path(path)
    datasets = image.meta.get("datasets") if image.fmt == "dicom" else None
    if not datasets:
        raise UnsupportedFormatError(
            f"only images read from DICOM can be written as DICOM (this one was read as {image.fmt}); "
            "save it as NIfTI (.nii.gz) instead",
            path,
        )
    planes = image.data if image.is_volume else image.data[None]
    multiframe = image.meta["multiframe"]
    expected = _frames(datasets[0]) if multiframe else len(datasets)
    if planes.shape != (expected, datasets[0].Rows, datasets[0].Columns):
        raise InvalidImageError(
            f"the pixels ({'×'.join(map(str, planes.shape))}) no longer match the DICOM header "
            f"({expected}×{datasets[0].Rows}×{datasets[0].Columns})",
            path,
        )
    # Output suffixes are ".dcm" or none (a series folder).
    folder = path.suffix.lower() != ".dcm"
    if not folder and len(datasets) > 1:
        raise UnsupportedFormatError(
            f"a series of {len(datasets)} slices is written as a folder (a path without a suffix), "
            "not one .dcm file",
            path,
        )
    if multiframe:
        groups = [(datasets[0], planes)]
    else:
        groups = [(ds, planes[i : i + 1]) for i, ds in enumerate(datasets)]
    series_uid = generate_uid()
    dtype = np.dtype(image.meta["stored_dtype"])
    stamp = provenance_text(image)
    label = DERIVED_SUFFIX if (image.meta.get("provenance") or {}).get("method") else ""  # a method's output
    outputs = [_derived(ds, frames, dtype, series_uid, multiframe, stamp, label) for ds, frames in groups]
    if folder:
        path.mkdir()
        for number, ds in enumerate(outputs, 1):
            ds.save_as(path / f"IM{number:05d}.dcm", enforce_file_format=True)
    else:
        outputs[0].save_as(path, enforce_file_format=True)


def _derived(
    source: Dataset, frames: np.ndarray, dtype: np.dtype, series_uid: str, multiframe: bool, stamp: str,
    label: str = "",
) -> Dataset:
    """A copy of ``source`` holding ``frames`` as a new instance of the derived series; ``stamp`` says
    how it was derived (DerivationDescription and a Contributing Equipment item); ``label`` ends the
    series description (once, whatever the source's said)."""
    ds = copy.deepcopy(source)
    if not ds.original_encoding[1]:
        # Big-endian source: decode every element so pydicom re-encodes them little-endian.
        for _ in ds.iterall():
            pass
        ds.set_original_encoding(False, True, ds.original_character_set)
    slope, intercept = _rescale(source)
    info = np.iinfo(dtype)
    stored = np.rint((frames.astype(np.float64) - intercept) / slope)
    stored = np.clip(stored, info.min, info.max).astype(dtype)
    bits = int(source.get("BitsStored") or dtype.itemsize * 8)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if dtype.kind == "i" else (0, 2**bits - 1)
    if stored.min() < low or stored.max() > high:
        bits = dtype.itemsize * 8  # the denoised values need the whole allocated word
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = dtype.itemsize * 8, bits, bits - 1
    ds.PixelRepresentation = int(dtype.kind == "i")
    if multiframe:
        ds.NumberOfFrames = len(frames)
    raw = stored.astype(dtype.newbyteorder("<")).tobytes()
    ds.PixelData = raw + b"\x00" * (len(raw) % 2)  # DICOM values have even length
    ds["PixelData"].VR = "OB" if dtype.itemsize == 1 else "OW"
    for keyword in STALE_PIXEL_TAGS:
        if keyword in ds:
            delattr(ds, keyword)
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    image_type = source.get("ImageType") or []
    image_type = list(image_type) if isinstance(image_type, MultiValue) else [image_type]
    ds.ImageType = ["DERIVED", "SECONDARY"] + image_type[2:]
    description = str(source.get("SeriesDescription", "")).replace(DERIVED_SUFFIX, "")
    ds.SeriesDescription = (description[: 64 - len(label)] + label).strip()  # LO holds 64 chars
    ds.DerivationDescription = stamp
    ds.ContributingEquipmentSequence = list(ds.get("ContributingEquipmentSequence", [])) + [_equipment(stamp)]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _equipment(stamp: str) -> Dataset:
    """A Contributing Equipment item naming QuietLens as the software that modified the pixels."""
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "109103", "DCM"
    purpose.CodeMeaning = "Modifying Equipment"
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = "QuietLens"
    item.ManufacturerModelName = "QuietLens"
    item.SoftwareVersions = __version__
    item.ContributionDateTime = time.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = stamp[:1024]  # ST holds 1024 characters
    return item
