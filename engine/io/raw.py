"""Camera RAW files through LibRaw (rawpy): the Bayer mosaic in, a rendering or a linear DNG out.

The mosaic is normalised per CFA channel to [0, 1] (see :mod:`..image`); ``meta`` keeps the levels
and colour data needed to undo that, to render the mosaic with LibRaw and to write a DNG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rawpy
import tifffile

from ..errors import CorruptFileError, InvalidImageError, QuietLensError, UnsupportedFormatError
from ..image import Image
from .limits import check_pixels

DNG_VERSION = 50706
# DNG colour tags copied from a DNG source to a DNG output, so both render alike: ColorMatrix1/2,
# CameraCalibration1/2, AnalogBalance, BaselineExposure, CalibrationIlluminant1/2, ProfileName,
# ForwardMatrix1/2.
DNG_COLOUR_TAGS = (50721, 50722, 50723, 50724, 50727, 50730, 50778, 50779, 50936, 50964, 50965)
# XYZ (D65) -> linear sRGB: the DNG ColorMatrix of a camera that has no colour data of its own.
XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
# LibRaw's ``flip`` <-> TIFF Orientation.
FLIP_TO_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}


def is_dng(path: str | Path) -> bool:
    """True if ``path`` is a TIFF container whose first IFD carries the DNGVersion tag."""
    try:
        with tifffile.TiffFile(path) as tif:
            return DNG_VERSION in tif.pages.first.tags
    except Exception:
        return False


def _rational(value: Any) -> float | None:
    """A TIFF rational (or plain number) as a float; zero counts as unknown."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or not value[1]:
            return None
        value = value[0] / value[1]
    return float(value) if value else None


def _tiff_tags(path: Path) -> dict[str, Any]:
    """Make, model, ISO, exposure and DNG colour tags from a TIFF-based RAW; {} for other containers."""
    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages.first.tags
            exif = tags.get(34665)
            exif = exif.value if exif is not None and isinstance(exif.value, dict) else {}

            def text(code: int) -> str | None:
                tag = tags.get(code)
                return (str(tag.value).strip("\x00 ") or None) if tag is not None else None

            def number(code: int, name: str) -> Any:
                tag = tags.get(code)
                return tag.value if tag is not None else exif.get(name)

            iso = number(34855, "ISOSpeedRatings")
            return {
                "make": text(271),
                "model": text(272) or text(50708),
                "unique_camera_model": text(50708),
                "iso": iso[0] if isinstance(iso, (tuple, list)) and iso else iso,
                "exposure_time": number(33434, "ExposureTime"),
                "dng_colour_tags": [
                    (t.code, int(t.dtype), t.count, t.value)
                    for c in DNG_COLOUR_TAGS
                    if (t := tags.get(c)) is not None
                ],
            }
    except Exception:
        return {}


def _open(path: Path) -> rawpy.RawPy:
    """The opened and unpacked file (as ``rawpy.imread``), its declared size checked before unpacking."""
    raw = rawpy.RawPy()
    try:
        raw.open_file(str(path))
        check_pixels((raw.sizes.raw_height, raw.sizes.raw_width), path)
        raw.unpack()
    except QuietLensError:
        raw.close()
        raise
    except rawpy.LibRawFileUnsupportedError as exc:
        raw.close()
        raise UnsupportedFormatError("LibRaw does not recognise this RAW format", path) from exc
    except Exception as exc:
        raw.close()
        raise CorruptFileError("the RAW file is damaged or truncated", path) from exc
    return raw


def _cfa(raw: rawpy.RawPy, path: Path) -> str:
    """The colours of the visible area's top-left 2x2, e.g. "RGGB"; only Bayer sensors pass."""
    if raw.raw_type != rawpy.RawType.Flat:
        raise UnsupportedFormatError("this RAW holds demosaiced (linear) data, not a Bayer mosaic", path)
    pattern = raw.raw_pattern
    desc = raw.color_desc.decode("ascii", "replace")
    if pattern is None or pattern.shape != (2, 2) or raw.num_colors != 3:
        raise UnsupportedFormatError(
            "only Bayer (2x2 RGGB-type) sensors are supported; X-Trans, Foveon and other layouts are not",
            path,
        )
    cfa = "".join(desc[c] for c in raw.raw_colors_visible[:2, :2].ravel())
    if sorted(cfa) != ["B", "G", "G", "R"]:
        raise UnsupportedFormatError(f"only RGB Bayer sensors are supported, not a {cfa} mosaic", path)
    return cfa


def _phases(meta: dict[str, Any]) -> list[tuple[slice, float, float]]:
    """For each of the 2x2 CFA positions: its pixels (as an index), black level and white - black.

    ``black_level_per_channel`` is indexed by LibRaw's colour index (0..3, second green = 3) and already
    includes the common black level; ``raw_pattern`` holds the indices of the visible top-left 2x2.
    """
    out = []
    for (dy, dx), color in np.ndenumerate(np.asarray(meta["raw_pattern"])):
        black = float(meta["black_level_per_channel"][color])
        out.append((np.s_[dy::2, dx::2], black, meta["white_level"] - black))
    return out


def load(path: Path) -> Image:
    path = Path(path)
    with _open(path) as raw:
        try:
            cfa = _cfa(raw, path)
            data = raw.raw_image_visible.astype(np.float32)
            other = raw.other
            meta: dict[str, Any] = {
                "black_level_per_channel": [float(b) for b in raw.black_level_per_channel],
                "white_level": int(raw.white_level),
                "cfa_pattern": cfa,
                "raw_pattern": raw.raw_colors_visible[:2, :2].tolist(),
                "color_desc": raw.color_desc.decode("ascii", "replace"),
                "camera_whitebalance": [float(v) for v in raw.camera_whitebalance],
                "daylight_whitebalance": [float(v) for v in raw.daylight_whitebalance],
                "rgb_xyz_matrix": raw.rgb_xyz_matrix.tolist(),
                "color_matrix": raw.color_matrix.tolist(),
                "flip": int(raw.sizes.flip),
            }
        except QuietLensError:
            raise
        except Exception as exc:  # LibRaw unpacks lazily: truncated data fails here
            raise CorruptFileError("the RAW data is damaged or truncated", path) from exc
    tags = _tiff_tags(path)
    # A tag present in the file wins (even one that says 0 = unknown); LibRaw's parse is the fallback.
    iso = other.iso_speed if tags.get("iso") is None else tags["iso"]
    exposure = other.shutter_speed if tags.get("exposure_time") is None else tags["exposure_time"]
    meta.update(
        make=tags.get("make"),
        model=tags.get("model"),
        unique_camera_model=tags.get("unique_camera_model"),
        iso=_rational(iso),
        exposure_time=_rational(exposure),
        dng_colour_tags=tags.get("dng_colour_tags", []),
    )
    if meta["white_level"] <= max(meta["black_level_per_channel"]):
        raise CorruptFileError("the RAW file's white level is not above its black level", path)
    for pixels, black, span in _phases(meta):
        data[pixels] = (data[pixels] - black) / span
    make, model = meta["make"] or "", meta["model"] or ""
    meta["summary"] = {
        "camera": (model if model.startswith(make) else f"{make} {model}").strip() or None,
        "cfa": cfa,
        "black_level": meta["black_level_per_channel"],
        "white_level": meta["white_level"],
        "iso": meta["iso"],
        "exposure_time": meta["exposure_time"],
        "raw_size": list(data.shape),
    }
    return Image(data, "raw", "HW", "raw", source=path, meta=meta)


def baseline_exposure(meta: dict[str, Any]) -> float:
    """The DNG BaselineExposure in EV (0 when absent): how much brighter the maker means the file to look."""
    for code, _dtype, _count, value in meta.get("dng_colour_tags") or ():
        if code == 50730:
            return _rational(value) or 0.0
    return 0.0


def _mosaic_dn(image: Image, scale: float = 1.0) -> np.ndarray:
    """The normalised mosaic back in sensor units (times ``scale``), rounded and clipped to uint16."""
    dn = np.empty_like(image.data)
    for pixels, black, span in _phases(image.meta):
        dn[pixels] = (image.data[pixels] * span + black) * scale
    return np.clip(np.rint(dn), 0, 65535).astype(np.uint16)


def render(image: Image, half_size: bool = True) -> np.ndarray:
    """An sRGB display rendering (HWC float32 in [0, 1]) of the mosaic, by LibRaw from the source file.

    The mosaic is written into the reopened source's raw buffer, so LibRaw applies the camera's own
    colour data and as-shot white balance. No auto-brightening, so renderings of the same file compare;
    a DNG's BaselineExposure is applied (within LibRaw's 1/4…8× range), as DNG readers do.
    """
    shift = float(np.clip(2.0 ** baseline_exposure(image.meta), 0.25, 8.0))
    if image.source is None or not Path(image.source).is_file():
        raise InvalidImageError("rendering a RAW mosaic needs its source file", image.source)
    with _open(image.source) as raw:
        visible = raw.raw_image_visible
        if visible.shape != image.data.shape:
            raise InvalidImageError(
                f"the mosaic is {image.data.shape} but the source holds {visible.shape}", image.source
            )
        visible[:] = _mosaic_dn(image)
        rgb = raw.postprocess(use_camera_wb=True, output_bps=16, half_size=half_size, no_auto_bright=True,
                              exp_shift=shift, exp_preserve_highlights=1.0 if shift > 1 else 0.0)
    return rgb.astype(np.float32) / 65535.0


def _rationals(values: Any, den: int = 10000) -> tuple[int, ...]:
    """Numbers as flat (numerator, denominator) pairs, the way tifffile takes (S)RATIONAL tags."""
    return tuple(v for x in np.ravel(values) for v in (int(round(float(x) * den)), den))


def _dng_tags(image: Image, cfa: str, black: list[int], white: int) -> list[tuple]:
    """DNG 1.4 tags for a 16-bit CFA image (uncompressed, one IFD)."""
    meta = image.meta
    camera = meta.get("unique_camera_model") or meta.get("model") or "Unknown camera"
    tags: list[tuple] = [
        (33421, 3, 2, (2, 2)),  # CFARepeatPatternDim
        (33422, 1, 4, bytes("RGB".index(c) for c in cfa)),  # CFAPattern, TIFF/EP codes R=0 G=1 B=2
        (DNG_VERSION, 1, 4, bytes((1, 4, 0, 0))),
        (50708, 2, 0, camera),  # UniqueCameraModel
        (50713, 3, 2, (2, 2)),  # BlackLevelRepeatDim
        (50714, 4, 4, tuple(black)),  # BlackLevel per CFA position
        (50717, 4, 1, white),  # WhiteLevel
        (274, 3, 1, FLIP_TO_ORIENTATION.get(meta.get("flip", 0), 1)),
    ]
    for code, key in ((271, "make"), (272, "model")):
        if meta.get(key):
            tags.append((code, 2, 0, meta[key]))
    wb = np.asarray(meta.get("camera_whitebalance", [0, 0, 0]), float)[:3]
    if not (wb > 0).all():
        wb = np.asarray(meta.get("daylight_whitebalance", [0, 0, 0]), float)[:3]
    if (wb > 0).all():
        tags.append((50728, 5, 3, _rationals(1.0 / wb, 1000000)))  # AsShotNeutral
    colour = list(meta.get("dng_colour_tags", []))
    if not any(t[0] == 50721 for t in colour):
        xyz = np.asarray(meta.get("rgb_xyz_matrix", np.zeros((4, 3))), float)[:3]
        matrix = xyz if np.abs(xyz).sum() > 0 else XYZ_TO_SRGB  # LibRaw too treats such a camera as sRGB
        colour = [(50721, 10, 9, _rationals(matrix)), (50778, 3, 1, 21)]  # ColorMatrix1 under D65
    tags += colour
    if meta.get("exposure_time"):
        tags.append((33434, 5, 1, _rationals(meta["exposure_time"], 1000000)))
    if meta.get("iso"):
        tags.append((34855, 3, 1, min(int(round(meta["iso"])), 65535)))
    return [(*t, True) for t in tags]


def _write_dng(image: Image, path: Path) -> None:
    meta = image.meta
    white = int(meta["white_level"])
    scale = max(1, 65535 // white)  # use the full 16 bits so the denoised values keep their precision
    black = [round(meta["black_level_per_channel"][c] * scale) for c in np.ravel(meta["raw_pattern"])]
    tifffile.imwrite(
        path,
        _mosaic_dn(image, scale),
        photometric=32803,
        extratags=_dng_tags(image, meta["cfa_pattern"], black, white * scale),
        software="QuietLens",
        metadata=None,
    )


def write(image: Image, path: Path) -> None:
    """``.dng``: linear CFA DNG of the mosaic; ``.tif``/``.png``: 16-bit sRGB rendering by LibRaw."""
    path = Path(path)
    if path.suffix.lower() == ".dng":
        _write_dng(image, path)
        return
    from . import photo

    rendered = Image(render(image, half_size=False), "photo", "HWC", "raw", meta={"dtype": "uint16"})
    photo.write(rendered, path)
