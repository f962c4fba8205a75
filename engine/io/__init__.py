"""Load any supported file into an :class:`~quietlens.engine.image.Image` and write results back.

The entry points are ``load``, ``save`` and ``sniff``. ``load(path)`` recognises the family from the
file's content (magic bytes, :mod:`.formats`), not only its name, so a PNG named ``.jpg`` still loads and
a truncated file gets a :class:`CorruptFileError`. Every loader checks the size a header declares
(:mod:`.limits`) before decoding, so a damaged or hostile header cannot make it allocate without bound,
and every loader reads an input whole or refuses it (a multi-page TIFF, a series with a damaged slice).
``save`` writes through a temporary name in the destination folder that is flushed to disk and renamed
into place only when complete (:mod:`.files`), so a failure, a kill or a power loss never leaves a
partial output; it never writes over, into or around its image's source, and replaces an existing
folder only when it is a series QuietLens wrote.

Family modules (``photo``, ``raw``, ``dicom``, ``nifti``) each provide ``load(path) -> Image`` and
``write(image, path)``; ``write`` may assume ``path`` is a fresh temporary path with the final suffix.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CorruptFileError, OutputError, QuietLensError
from ..image import Image
from .files import PARTIAL_NAME, atomic_path, check_output, clean_leftovers, same_file  # noqa: F401
from .formats import (  # noqa: F401
    DICOM_SUFFIXES, INPUT_SUFFIXES, NIFTI_SUFFIXES, OUTPUT_SUFFIXES, PHOTO_SUFFIXES, RAW_SUFFIXES, full_suffix,
    output_family, sniff,
)
from .limits import check_pixels, max_pixels  # noqa: F401
from .provenance import provenance_text  # noqa: F401


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


def replaceable(folder: Path) -> None:
    """Raise :class:`OutputError` unless ``folder`` is an output QuietLens may replace: a series it wrote."""
    _family("dicom").check_written_series(folder)


def check_destination(source: str | Path | None, path: str | Path, overwrite: bool = False) -> None:
    """Refuse, before any work, an output path that ``save`` would refuse (see :func:`.files.check_output`)."""
    check_output(Path(source) if source is not None else None, Path(path), overwrite, replaceable)


def save(image: Image, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``image`` to ``path`` atomically, in the format its suffix names; never over its source.

    A path with no suffix means a DICOM series folder. Returns the written path.
    """
    path = Path(path)
    family = output_family(image, path)
    check_destination(image.source, path, overwrite)
    try:
        with atomic_path(path, overwrite=overwrite, owned=replaceable) as tmp:
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
