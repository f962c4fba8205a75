"""The one in-memory image model every loader produces and every method consumes.

Conventions (each loader guarantees them, each saver relies on them):

==========  ==============  ==========================================================================
kind        axes            values in ``data`` (always float32, C-contiguous)
==========  ==============  ==========================================================================
``photo``   ``HWC`` (C=1|3) display-referred; integer sources scaled to [0, 1] (8-bit /255, 16-bit
                            /65535); float TIFF kept as stored. Alpha is not denoised: ``meta['alpha']``.
``raw``     ``HW``          Bayer mosaic, black level subtracted and divided by (white - black) per
                            CFA channel, so [0, 1] (may slightly exceed 1 or go below 0 from noise).
``ct``      ``HW``|``ZHW``  Hounsfield units (RescaleSlope/Intercept applied).
``mr``      ``HW``|``ZHW``  scanner units after rescale; 4-D NIfTI is ``TZHW``.
``medical`` same as ``mr``  other DICOM modalities (CR, DX, US, ...), real values after rescale.
==========  ==============  ==========================================================================

Volumes are ``Z, H, W`` whatever the source order (NIfTI ``x, y, z`` is transposed on load and back on
save, so the affine in ``meta`` stays the file's own). ``meta`` holds what the saver of the same family
needs to write the image back faithfully; methods must carry it through untouched (use
:meth:`Image.with_data`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("photo", "raw", "ct", "mr", "medical")
MEDICAL_KINDS = ("ct", "mr", "medical")


@dataclass
class Image:
    data: np.ndarray
    kind: str
    axes: str
    fmt: str  # source family: png, jpeg, tiff, webp, raw, dicom, nifti
    source: Path | None = None
    spacing: tuple[float, ...] | None = None  # physical size of one pixel along ``axes`` (mm), when known
    window: tuple[float, float] | None = None  # display (centre, width) in data units, when known
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown image kind {self.kind!r}")
        if self.data.ndim != len(self.axes):
            raise ValueError(f"data has {self.data.ndim} dims but axes are {self.axes!r}")
        self.data = np.ascontiguousarray(self.data, dtype=np.float32)

    def with_data(self, data: np.ndarray, **changes: Any) -> "Image":
        """A copy holding new pixels (same shape convention), sharing metadata for write-back."""
        return dataclasses.replace(self, data=data, **changes)

    @property
    def is_volume(self) -> bool:
        return "Z" in self.axes

    @property
    def height(self) -> int:
        return self.data.shape[self.axes.index("H")]

    @property
    def width(self) -> int:
        return self.data.shape[self.axes.index("W")]

    def slices(self) -> np.ndarray:
        """All 2-D planes as ``(N, H, W[, C])``: a view for 2-D images and for ``ZHW`` / ``TZHW`` volumes."""
        if self.axes in ("HW", "HWC"):
            return self.data[None]
        return self.data.reshape((-1,) + self.data.shape[-2:])

    def describe(self) -> dict[str, Any]:
        """Key facts for ``quietlens info`` and the GUI status bar (JSON-serialisable)."""
        finite = self.data[np.isfinite(self.data)]
        out: dict[str, Any] = {
            "kind": self.kind,
            "format": self.fmt,
            "axes": self.axes,
            "shape": list(self.data.shape),
            "dtype": str(self.data.dtype),
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
        }
        if self.spacing:
            out["spacing"] = [float(s) for s in self.spacing]
        if self.window:
            out["window"] = [float(w) for w in self.window]
        out.update(self.meta.get("summary", {}))
        return out

    def headline(self) -> str:
        """One line for people (the GUI status bar): kind, format, camera or scanner, size. E.g.
        ``RAW mosaic (RGGB) · DNG · Canon EOS Kiss X4 · 1734 × 1156 px``."""
        facts = self.describe()
        kind = KIND_NAMES.get(self.kind, self.kind)
        if self.kind == "raw" and facts.get("cfa"):
            kind += f" ({facts['cfa']})"
        suffix = self.source.suffix.lstrip(".").upper() if self.source is not None else ""
        fmt = FORMAT_NAMES.get(self.fmt) or suffix or self.fmt.upper()
        if self.kind == "raw" and suffix:
            fmt = suffix  # the camera maker's container: DNG, CR2, NEF, ...
        if self.kind == "photo":
            channels = {1: "grey", 3: "RGB"}.get(facts.get("channels"), "") + (" + alpha" if facts.get("alpha") else "")
            fmt += f", {facts.get('bit_depth', '')}-bit {channels}".replace(" -bit", "").rstrip()
        if self.fmt == "dicom" and int(facts.get("slices") or 1) > 1:
            fmt += f" series of {facts['slices']} slices"
        maker = facts.get("camera") or facts.get("manufacturer") or ""
        sizes = [self.data.shape[self.axes.index(a)] for a in "WHZ" if a in self.axes]
        size = " × ".join(map(str, sizes)) + (" voxels" if len(sizes) == 3 else " px")
        if "T" in self.axes:
            size += f" × {self.data.shape[0]} frames"
        return " · ".join(part for part in (kind, fmt, str(maker).strip(), size) if part)


KIND_NAMES = {"photo": "Photo", "raw": "RAW mosaic", "ct": "CT", "mr": "MR", "medical": "Medical image"}
AXIS_NAMES = {"Z": "z", "H": "y", "W": "x"}
FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "webp": "WebP", "dicom": "DICOM", "nifti": "NIfTI"}


def readable_facts(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """:meth:`Image.describe`'s facts as (label, text) for people (``quietlens info``): the value range
    and the display window with their unit and names, sizes as ``a × b``, numbers to 4 significant
    digits. The facts themselves (``--json``) keep full precision."""
    unit = " HU" if facts.get("kind") == "ct" else ""
    axes = str(facts.get("axes", "")).replace("C", "")
    rows: list[tuple[str, str]] = []
    for key, value in facts.items():
        if key == "max" or key == "dtype":
            continue  # max goes with min; dtype is always float32 in memory (the file's is below)
        if key == "min":
            key, text = "values", f"{readable_number(value)} … {readable_number(facts.get('max'))}{unit}"
        elif key == "window" and value:
            text = f"centre {readable_number(value[0])}, width {readable_number(value[1])}{unit}"
        elif key == "shape":
            text = " × ".join(map(str, value)) + f" ({facts.get('axes', '')})"
        elif key == "spacing" and value:
            spatial = [(a, v) for a, v in zip(axes, value) if a != "T"]
            names = " × ".join(AXIS_NAMES[a] for a, _ in spatial)
            text = " × ".join(readable_number(v) for _, v in spatial) + f" mm ({names})"
            text += "".join(f", frames every {readable_number(v)}" for a, v in zip(axes, value) if a == "T")
        elif key.endswith("size") and isinstance(value, (list, tuple)):
            text = " × ".join(_text(v) for v in value)
        else:
            text = _text(value)
        rows.append((key.replace("_", " "), text))
    return rows


def readable_number(value: Any) -> str:
    """A number as people read it: whole above 1000, else 4 significant digits; "?" for None."""
    if value is None:
        return "?"
    if not isinstance(value, (float, np.floating)):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _text(value: Any) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return readable_number(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return str(value) if str(value).strip() else "(none)"


# The blind-spot networks see photos standardised per channel; training and inference share this.
STD_FLOOR = 1.0 / 120.0  # σ floor: flat images are not amplified into noise


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and floored standard deviation of an HWC photo (gray counts as 3 equal channels),
    in float64. OpenCV's one pass with float64 sums: numpy's std makes float64 copies of the photo (2.4 s
    on 24 MP, against 0.03 s)."""
    import cv2

    mean, std = (v.ravel() for v in cv2.meanStdDev(x))
    std = np.maximum(std, STD_FLOOR)
    if x.shape[2] == 1:
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    return mean, std
