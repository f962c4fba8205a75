"""Load any supported file into an :class:`~quietlens.engine.image.Image` and write results back.

``load(path)`` recognises the family from the file's content (magic bytes), not only its name, so a
PNG named ``.jpg`` still loads and a truncated file gets a :class:`CorruptFileError`. Every loader checks
the size a header declares against :func:`max_pixels` before decoding, so a damaged or hostile header
cannot make it allocate without bound. ``save`` writes through a temporary file in the destination
folder that is flushed to disk and renamed into place only when complete, so a failure, a kill or a
power loss never leaves a partial output, and it refuses to overwrite the image's own source.

Family modules (``photo``, ``raw``, ``dicom``, ``nifti``) each provide ``load(path) -> Image`` and
``write(image, path)``; ``write`` may assume ``path`` is a fresh temporary path with the final suffix.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from ..errors import CorruptFileError, OutputError, QuietLensError, UnsupportedFormatError
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

# Which output suffixes each image kind can be written to (first = default).
OUTPUT_SUFFIXES = {
    "photo": (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".webp"),
    "raw": (".tif", ".tiff", ".png", ".dng"),
    "ct": (".dcm", "", ".nii.gz", ".nii"),  # "" = a folder holding a DICOM series
    "mr": (".dcm", "", ".nii.gz", ".nii"),
    "medical": (".dcm", "", ".nii.gz", ".nii"),
}


DEFAULT_MAX_PIXELS = 1_000_000_000


def max_pixels() -> int:
    """The most pixels (all planes of a volume together) a loader accepts: ``$QUIETLENS_MAX_PIXELS``,
    else one gigapixel."""
    text = os.environ.get("QUIETLENS_MAX_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise QuietLensError(f"QUIETLENS_MAX_PIXELS must be a positive integer, got {text!r}")
    return int(text)


def check_pixels(shape: tuple[int, ...], path: Path | None = None) -> None:
    """Refuse a declared image shape (spatial dims only) larger than :func:`max_pixels`, before decoding."""
    count, limit = math.prod(int(n) for n in shape), max_pixels()
    if count > limit:
        shown = "×".join(str(int(n)) for n in shape)
        raise UnsupportedFormatError(
            f"the image declares {shown} = {count:,} pixels, more than the limit of {limit:,} "
            "(a damaged header, or set QUIETLENS_MAX_PIXELS to allow it)", path
        )


def full_suffix(path: Path) -> str:
    """The suffix that decides the format: ``.nii.gz`` counts as one, case-insensitive."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def sniff(path: str | Path) -> str:
    """The family that reads ``path``: ``photo``, ``raw``, ``dicom`` (a file or a series folder), ``nifti``."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    if not path.exists():  # also a dangling link or a symlink loop
        raise QuietLensError("no such file or folder", path)
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


def _family(name: str):
    from . import dicom, nifti, photo, raw

    return {"photo": photo, "raw": raw, "dicom": dicom, "nifti": nifti}[name]


def load(path: str | Path) -> Image:
    """Read a file (or a DICOM series folder) into an Image, or raise a typed, readable error."""
    path = Path(path)
    family = sniff(path)
    try:
        image = _family(family).load(path)
    except QuietLensError:
        raise
    except MemoryError as exc:
        raise CorruptFileError("the image is too large to load", path) from exc
    except Exception as exc:  # a library's own failure: report it as unreadable, keep the cause
        raise CorruptFileError(f"cannot be read as {family}: {exc}", path) from exc
    except BaseException as exc:
        # Decoders written in Rust (pylibjpeg-rle) panic on some damaged data with pyo3's PanicException,
        # a BaseException: a damaged file, not a reason to end the program.
        if type(exc).__name__ != "PanicException":
            raise
        raise CorruptFileError(f"cannot be read as {family}: the decoder failed ({exc})", path) from exc
    image.source = path
    return image


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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


# The temporary names atomic_path makes: ".NAME-XXXXXXXX-partSUFFIX" (hidden, so never taken for an input).
PARTIAL_NAME = re.compile(r"^\..*-[0-9a-f]{8}-part(\.[A-Za-z0-9.]+)?$")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # a file system without fsync: nothing to flush
            raise
    finally:
        os.close(fd)


def _flush_to_disk(tmp: Path) -> None:
    """Flush a finished file (or every file of a finished folder) before it is renamed into place:
    otherwise a power loss can leave the new name pointing at empty or partial data."""
    for f in (p for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else [tmp]:
        _fsync(f)


@contextlib.contextmanager
def atomic_path(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (same suffix); rename it onto ``final`` on success.

    On any exception the temporary file or folder is removed and ``final`` is left as it was. A process
    killed meanwhile leaves only the hidden temporary name (see :data:`PARTIAL_NAME`), never ``final``.
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError("the output folder does not exist", parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError("the output folder is not writable", parent)
    if final.exists() and not overwrite:
        raise OutputError("the output already exists (use overwrite to replace it)", final)
    suffix = full_suffix(final)
    # Hidden, unique, and ending in the final suffix (none for a series folder) so writers see the format.
    tmp = parent / f".{final.name[: len(final.name) - len(suffix)]}-{uuid.uuid4().hex[:8]}-part{suffix}"
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError("the writer produced no output", final)
        _flush_to_disk(tmp)
        if tmp.is_dir() and final.is_dir():
            shutil.rmtree(final)  # replacing a series folder the user asked to overwrite
        os.replace(tmp, final)
        if os.name == "posix":  # make the rename itself durable (Windows cannot open a folder for this)
            with contextlib.suppress(OSError):  # the output is complete either way
                _fsync(parent)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def provenance_text(image: Image) -> str:
    """One line naming the software, method, parameters and model that made ``image``, from
    ``meta['provenance']`` (set by the pipeline; optional), for savers that record provenance."""
    from .. import __version__

    prov = image.meta.get("provenance") or {}
    text = f"Denoised with QuietLens {prov.get('version') or __version__}"
    if prov.get("method"):
        params = ", ".join(f"{k}={v:g}" for k, v in (prov.get("params") or {}).items())
        text += f", method {prov['method']}" + (f" ({params})" if params else "")
    if prov.get("model_sha256"):
        text += f", model sha256 {prov['model_sha256']}"
    return text


def save(image: Image, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``image`` to ``path`` atomically, in the format its suffix names; never over its source.

    A path with no suffix means a DICOM series folder. Returns the written path.
    """
    path = Path(path)
    if image.source is not None and _same_file(image.source, path):
        raise OutputError("refusing to overwrite the input file", path)
    family = output_family(image, path)
    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            try:
                _family(family).write(image, tmp)
            except QuietLensError:
                raise
            except OSError as exc:
                raise OutputError(f"cannot be written: {exc.strerror or exc}", path) from exc
            except Exception as exc:
                raise OutputError(f"cannot be written as {family}: {exc}", path) from exc
    except OSError as exc:  # flushing or renaming the finished file (a full disk shows up here too)
        raise OutputError(f"cannot be written: {exc.strerror or exc}", path) from exc
    return path
