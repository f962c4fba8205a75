"""Photos: PNG, JPEG, TIFF and WebP in and out, keeping bit depth, alpha, EXIF and ICC profile.

Decoders: OpenCV for PNG (Pillow cannot hold 16-bit RGB), Pillow for JPEG and WebP (it refuses
truncated data where OpenCV fills in grey), tifffile for TIFF (OpenCV's libtiff for compressions
tifffile cannot decode without imagecodecs, such as LZW and JPEG).
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
from PIL import Image as PILImage

from ..errors import CorruptFileError, QuietLensError, UnsupportedFormatError
from ..image import Image
from .formats import PHOTO_FORMATS
from .limits import check_pixels

EXIF_HEADER = b"Exif\x00\x00"  # meta['exif'] always starts with it, as JPEG stores it
INT_MAX = {"uint8": 255.0, "uint16": 65535.0}


def _format(head: bytes, path: Path) -> str:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    raise UnsupportedFormatError("not a PNG, JPEG, TIFF or WebP image", path)


def _rgb_from_bgr(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        return pixels[..., [2, 1, 0, 3][: pixels.shape[2]]]
    return pixels


def _cv2_decode(data: bytes, gray: bool) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError("the decoder rejected the data")
    if gray and pixels.ndim == 3:  # OpenCV expands grey + alpha to BGRA
        return pixels[..., [0, 3]] if pixels.shape[2] == 4 else pixels[..., :1]
    return _rgb_from_bgr(pixels)


def _read_png(data: bytes, path: Path) -> tuple[np.ndarray, dict]:
    if data[12:16] == b"IHDR" and len(data) >= 24:  # OpenCV would allocate what IHDR declares
        width, height = struct.unpack(">II", data[16:24])
        check_pixels((height, width), path)
    with PILImage.open(io.BytesIO(data)) as im:
        _check_single_frame(im, "an animated PNG", "frames", path)
        info = dict(im.info)
        im.verify()  # walks every chunk and its CRC up to IEND: OpenCV decodes truncated files silently
    return _cv2_decode(data, gray=data[25] in (0, 4)), info  # IHDR colour type: grey, grey + alpha


def _read_pillow(data: bytes, path: Path) -> tuple[np.ndarray, dict]:
    with PILImage.open(io.BytesIO(data)) as im:
        check_pixels(im.size[::-1], path)
        if im.format == "WEBP":  # (a JPEG's extra frames, MPO, are previews of the same picture)
            _check_single_frame(im, "an animated WebP", "frames", path)
        im.load()  # raises on truncated data
        if im.mode == "CMYK":
            raise UnsupportedFormatError("CMYK images are not supported (only grey and RGB)", path)
        if im.mode not in ("L", "LA", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        return np.asarray(im), dict(im.info)


def _check_single_frame(im: PILImage.Image, what: str, unit: str, path: Path) -> None:
    """Refuse an image with several frames: keeping only the first would drop the rest unseen."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise UnsupportedFormatError(f"is {what} with {frames} {unit}; only single images are supported "
                                     f"(save each {unit[:-1]} as its own file)", path)


def _read_tiff(data: bytes, path: Path) -> tuple[np.ndarray, dict]:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        # Reduced-resolution pages (thumbnails, NewSubfileType bit 0) are previews of the image, not images.
        pages = [p for p in tif.pages if not getattr(p, "is_reduced", False)]
        if len(pages) > 1:
            raise UnsupportedFormatError(f"is a multi-page TIFF with {len(pages)} pages; only single images are "
                                         "supported (save each page as its own file)", path)
        page = tif.pages.first
        photometric = tifffile.PHOTOMETRIC(page.photometric)
        gray = photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE)
        ycbcr = photometric == tifffile.PHOTOMETRIC.YCBCR  # mostly JPEG-in-TIFF; libtiff converts it
        if not (gray or ycbcr or photometric == tifffile.PHOTOMETRIC.RGB):
            raise UnsupportedFormatError(f"{photometric.name} TIFF is not supported (only grey and RGB)", path)
        if page.samplesperpixel > (2 if gray else 4):
            raise UnsupportedFormatError(f"TIFF with {page.samplesperpixel} channels is not supported", path)
        check_pixels((page.imagedepth, page.imagelength, page.imagewidth), path)
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
        if not ends or max(ends) > len(data):
            raise CorruptFileError("the TIFF image data is truncated", path)
        icc = page.tags.get(34675)
        info = {"icc_profile": bytes(icc.value)} if icc is not None else {}
        if page.compression in tifffile.TIFF.DECOMPRESSORS and not ycbcr:
            pixels = page.asarray()
            if page.axes.startswith("S"):  # planar storage: channels first
                pixels = np.moveaxis(pixels, 0, -1)
        else:
            pixels = _cv2_decode(data, gray)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        pixels = (np.iinfo(pixels.dtype).max if pixels.dtype.kind == "u" else 1.0) - pixels
    return pixels, info


def load(path: Path) -> Image:
    """Decode a photo into ``photo``/``HWC`` floats; alpha, bit depth, EXIF and ICC go to ``meta``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptFileError(f"cannot be read ({exc.strerror or exc})", path) from exc
    fmt = _format(data[:16], path)
    try:
        if fmt == "png":
            pixels, info = _read_png(data, path)
        elif fmt == "tiff":
            pixels, info = _read_tiff(data, path)
        else:
            pixels, info = _read_pillow(data, path)
    except QuietLensError:
        raise
    except PILImage.DecompressionBombError as exc:
        raise UnsupportedFormatError(f"the image is too large to open ({exc})", path) from exc
    except Exception as exc:  # every decoder has its own exception types for damaged data
        raise CorruptFileError(f"the {fmt.upper()} data is damaged or truncated", path) from exc
    return _to_image(pixels, info, fmt, path)


def _to_image(pixels: np.ndarray, info: dict, fmt: str, path: Path) -> Image:
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[2] if pixels.ndim == 3 else 0
    if channels not in (1, 2, 3, 4):
        raise UnsupportedFormatError(f"images of shape {pixels.shape} are not supported", path)
    dtype = pixels.dtype
    if dtype.kind == "f":
        dtype = np.dtype(np.float32)
    elif dtype.name not in INT_MAX:
        raise UnsupportedFormatError(f"{dtype.name} samples are not supported (8-bit, 16-bit or float)", path)
    has_alpha = channels in (2, 4)
    alpha = pixels[..., -1].copy() if has_alpha else None
    colour = pixels[..., : channels - int(has_alpha)]
    data = colour.astype(np.float32) / INT_MAX.get(dtype.name, 1.0)
    exif = info.get("exif") or None
    if exif and not exif.startswith(EXIF_HEADER):
        exif = EXIF_HEADER + exif
    icc = info.get("icc_profile") or None
    meta: dict[str, Any] = {
        "dtype": dtype.name,
        "alpha": alpha,
        "exif": exif,
        "icc_profile": icc,
        "summary": {
            "bit_depth": dtype.itemsize * 8,
            "sample_format": "float" if dtype.kind == "f" else "integer",
            "channels": int(colour.shape[2]),
            "alpha": has_alpha,
            "icc_profile": icc is not None,
            "exif": exif is not None,
        },
    }
    return Image(data, "photo", "HWC", fmt, source=path, meta=meta)


def _quantise(values: np.ndarray, dtype: str) -> np.ndarray:
    """Float samples in [0, 1] to ``dtype`` (clipped, rounded to nearest); float32 is kept as is."""
    if dtype == "float32":
        return values.astype(np.float32)
    return np.rint(np.clip(values, 0.0, 1.0) * INT_MAX[dtype]).astype(dtype)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _write_png16(pixels: np.ndarray, path: Path, icc: bytes | None, exif: bytes | None) -> None:
    """16-bit PNG by OpenCV, with the iCCP and eXIf chunks (which OpenCV cannot write) put after IHDR."""
    if pixels.shape[2] == 2:  # OpenCV writes no grey + alpha: store it as RGBA
        pixels = pixels[..., [0, 0, 0, 1]]
    ok, encoded = cv2.imencode(".png", _rgb_from_bgr(pixels))
    png = encoded.tobytes()
    if not ok or png[12:16] != b"IHDR":
        raise ValueError("the PNG encoder failed")
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif.removeprefix(EXIF_HEADER))
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, 13 data bytes and CRC
    path.write_bytes(png[:ihdr_end] + extra + png[ihdr_end:])


def write(image: Image, path: Path) -> None:
    """Write in the format the suffix names, at the source's bit depth where the format allows it.

    8-bit stays 8-bit; 16-bit stays 16-bit in PNG and TIFF; float stays float32 in TIFF and becomes
    16-bit in PNG; JPEG and WebP are 8-bit. Alpha, EXIF and ICC are written where the format holds
    them (TIFF: ICC only).
    """
    path = Path(path)
    fmt = PHOTO_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UnsupportedFormatError("photos can be written as PNG, TIFF, JPEG or WebP", path)
    source = image.meta.get("dtype", "uint8")
    if fmt in ("jpeg", "webp") or source == "uint8":
        dtype = "uint8"
    else:
        dtype = source if fmt == "tiff" else "uint16"
    pixels = _quantise(image.data, dtype)
    alpha = image.meta.get("alpha")
    if alpha is not None and alpha.shape == pixels.shape[:2] and fmt != "jpeg":
        if alpha.dtype.name != dtype:
            alpha = _quantise(alpha.astype(np.float32) / INT_MAX.get(alpha.dtype.name, 1.0), dtype)
        pixels = np.concatenate([pixels, alpha[..., None]], axis=2)
    icc, exif = image.meta.get("icc_profile"), image.meta.get("exif")
    if fmt == "tiff":
        tifffile.imwrite(
            path,
            pixels[..., 0] if pixels.shape[2] == 1 else pixels,
            photometric="rgb" if pixels.shape[2] >= 3 else "minisblack",
            extrasamples=("unassalpha",) if pixels.shape[2] in (2, 4) else None,
            # Fast deflate: photographic noise gains little from higher levels. tifffile's
            # floating-point predictor needs imagecodecs, so floats go without one.
            compression="zlib",
            compressionargs={"level": 1},
            predictor=pixels.dtype.kind == "u",
            iccprofile=icc,
            software="QuietLens",
            metadata=None,
        )
    elif dtype == "uint16":
        _write_png16(pixels, path, icc, exif)
    else:
        options: dict[str, Any] = {}
        if fmt in ("jpeg", "webp"):
            options["quality"] = 95
        if fmt == "jpeg":
            options["subsampling"] = 0  # 4:4:4: keep the colour detail the denoiser preserved
        if icc:
            options["icc_profile"] = icc
        if exif:
            options["exif"] = exif
        PILImage.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(
            path, format=fmt.upper(), **options
        )
