"""What a loader may allocate: every loader checks the size a header declares before decoding, so a
damaged or hostile header cannot make it allocate without bound.

Three checks, each before any pixel is read: the pixel count (:func:`max_pixels`), the bytes the loader
will hold for those pixels (:func:`max_bytes`), and whether the file can hold the pixel data its header
declares at all (:func:`check_file_holds`: an 8 KB file cannot hold 7 GB of pixels, raw or deflated).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import CorruptFileError, QuietLensError, UnsupportedFormatError

DEFAULT_MAX_PIXELS = 1_000_000_000
# Deflate (zlib, gzip) cannot expand data more than about 1032 times: the bound for compressed files.
DEFLATE_MAX_RATIO = 1032


def _setting(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise QuietLensError(f"{name} must be a positive integer, got {text!r}")
    return int(text)


def max_pixels() -> int:
    """The most pixels (all planes of a volume together) a loader accepts: ``$QUIETLENS_MAX_PIXELS``,
    else one gigapixel."""
    return _setting("QUIETLENS_MAX_PIXELS", DEFAULT_MAX_PIXELS)


def max_bytes() -> int:
    """The most bytes a loader may allocate for one image: ``$QUIETLENS_MAX_BYTES``, else half of this
    machine's memory (8 GiB where that is unknown)."""
    try:
        half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):  # not POSIX
        half = 8 << 30
    return _setting("QUIETLENS_MAX_BYTES", half)


def _shown(shape: tuple[int, ...]) -> str:
    return "×".join(str(int(n)) for n in shape)


def check_pixels(shape: tuple[int, ...], path: Path | None = None, bytes_per_pixel: int = 8) -> None:
    """Refuse a declared image shape larger than :func:`max_pixels`, or whose pixels at ``bytes_per_pixel``
    (what the loader holds per pixel while decoding) exceed :func:`max_bytes`."""
    count = math.prod(int(n) for n in shape)
    limit = max_pixels()
    if count > limit:
        raise UnsupportedFormatError(
            f"the image declares {_shown(shape)} = {count:,} pixels, more than the limit of {limit:,} "
            "(a damaged header, or set QUIETLENS_MAX_PIXELS to allow it)", path
        )
    need, budget = count * bytes_per_pixel, max_bytes()
    if need > budget:
        raise UnsupportedFormatError(
            f"the image declares {_shown(shape)} pixels, which need {need / 2**30:.1f} GiB to load, more "
            f"than the limit of {budget / 2**30:.1f} GiB (set QUIETLENS_MAX_BYTES to allow it)", path
        )


def check_file_holds(declared: int, path: Path, start: int = 0, deflated: bool = False) -> None:
    """Refuse a file too small for the ``declared`` bytes of pixel data its header promises from byte
    ``start`` on; a deflated file may hold at most :data:`DEFLATE_MAX_RATIO` times its size."""
    size = path.stat().st_size
    room = size * DEFLATE_MAX_RATIO if deflated else size - start
    if declared > room:
        what = f"a {size:,}-byte compressed file" if deflated else f"the {max(room, 0):,} bytes the file holds"
        raise CorruptFileError(
            f"the header declares {declared:,} bytes of pixel data, more than {what} (truncated or damaged)",
            path,
        )
