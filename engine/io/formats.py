"""Which files QuietLens reads and writes, and how it names outputs: the one home of the format tables.

``sniff(path)`` recognises a file's family from its content (magic bytes), not only its name, so a PNG
named ``.jpg`` still loads. ``OUTPUT_SUFFIXES`` says which formats each image kind can be written to,
``output_family`` which writer handles a destination, ``default_output_path`` where batch puts the result
of each input, and ``FORMAT_NAMES`` how the formats are called in a file dialog.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CorruptFileError, QuietLensError, UnsupportedFormatError
from ..image import Image

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# Vendor RAW formats LibRaw reads; DNG is recognised by content as well.
RAW_SUFFIXES = (
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2",
    ".rwl", ".pef", ".ptx", ".srw", ".x3f", ".kdc", ".dcr", ".k25", ".3fr", ".fff", ".iiq", ".mos",
    ".mef", ".mrw", ".erf", ".raw", ".rwz", ".braw", ".gpr",
)
INPUT_SUFFIXES = PHOTO_SUFFIXES + RAW_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES

# Which output suffixes each image kind can be written to (first = default).
OUTPUT_SUFFIXES = {
    "photo": (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".webp"),
    "raw": (".tif", ".tiff", ".png", ".dng"),
    "ct": (".dcm", "", ".nii.gz", ".nii"),  # "" = a folder holding a DICOM series
    "mr": (".dcm", "", ".nii.gz", ".nii"),
    "medical": (".dcm", "", ".nii.gz", ".nii"),
}
# The photo writer's format for each photo output suffix.
PHOTO_FORMATS = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
# Where each source family's result goes in a batch (None: the input's own suffix; a series stays a folder).
DEFAULT_OUTPUT_SUFFIX = {"photo": None, "raw": ".tif", "dicom": ".dcm", "nifti": None}
# How a file dialog names each output suffix.
FORMAT_NAMES = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP",
                ".dng": "DNG (RAW mosaic)", ".dcm": "DICOM", ".nii.gz": "NIfTI, compressed", ".nii": "NIfTI",
                "": "DICOM series folder"}


def full_suffix(path: Path) -> str:
    """The suffix that decides the format: ``.nii.gz`` counts as one, case-insensitive."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(path).suffix.lower()


def stem(path: Path) -> str:
    """The name without its image suffix (``scan.nii.gz`` -> ``scan``; other suffixes stay)."""
    name, suffix = Path(path).name, full_suffix(path)
    return name[: len(name) - len(suffix)] if suffix in INPUT_SUFFIXES else name


def sniff(path: str | Path) -> str:
    """The family that reads ``path``: ``photo``, ``raw``, ``dicom`` (a file or a series folder), ``nifti``."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    if not path.exists():
        why = " (a broken link or a link loop)" if path.is_symlink() else ""
        raise QuietLensError(f"no such file or folder{why}", path)
    try:  # the file may vanish or be unreadable between the check and the read
        if path.stat().st_size == 0:
            raise CorruptFileError("the file is empty", path)
        with open(path, "rb") as f:
            head = f.read(352)
    except OSError as exc:
        raise CorruptFileError(f"cannot be read ({exc.strerror or exc})", path) from exc
    suffix = full_suffix(path)
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
        return "photo"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "photo"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or suffix in NIFTI_SUFFIXES:
        return "nifti"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        if suffix in RAW_SUFFIXES:
            return "raw"
        from . import raw  # a TIFF container may still be a DNG that was renamed

        return "raw" if raw.is_dng(path) else "photo"
    if suffix in RAW_SUFFIXES:
        return "raw"
    if suffix in DICOM_SUFFIXES:
        return "dicom"  # DICOM without the 128-byte preamble; the reader decides
    raise UnsupportedFormatError(
        "not a recognised image (photos: PNG/JPEG/TIFF/WebP; RAW via LibRaw; DICOM; NIfTI)", path
    )


def output_family(image: Image, path: Path) -> str:
    """The family that writes ``image`` to ``path``, chosen by the output's suffix and the image kind."""
    suffix = "" if path.is_dir() or not path.suffix else full_suffix(path)
    allowed = OUTPUT_SUFFIXES[image.kind]
    if suffix not in allowed:
        shown = ", ".join(s or "a folder (DICOM series)" for s in allowed)
        raise UnsupportedFormatError(f"a {image.kind} image can be written as {shown}, not {suffix!r}", path)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if image.kind == "raw":
        return "raw"
    if image.kind == "photo":
        return "photo"
    return "dicom"


def default_output_path(src: Path, out_root: Path, in_root: Path) -> Path:
    """Mirror ``src`` (a file or a DICOM series folder) from ``in_root`` under ``out_root``."""
    rel = src.relative_to(in_root) if src != in_root else Path(src.name)
    if src.is_dir():
        return out_root / rel
    suffix = DEFAULT_OUTPUT_SUFFIX[sniff(src)]
    if suffix is None:
        return out_root / rel
    return out_root / rel.parent / (stem(rel) + suffix)
