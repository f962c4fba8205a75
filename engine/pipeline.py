"""One file through one method: load → prepare → run → save. The CLI, batch and GUI all call this."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import __version__, io
from .errors import InvalidImageError, QuietLensError
from .image import Image
from .methods import Method, check_kind, get, resolve_params
from .progress import CancelToken, Progress, no_progress, sub_progress
from .regions import check_region_params

# "Nothing was removed": the result moved by less than this fraction of the input's own noise estimate,
# and that estimate is at least NOISE_FLOOR of the data's 0.5–99.5 % range (below: no noise to speak of).
UNCHANGED_FRACTION = 0.1
NOISE_FLOOR = 1e-3


@dataclass
class Result:
    """A method's output. ``model_sha256`` is the hash of the graph it ran, when the method says."""

    image: Image
    state: Any
    method: str
    params: dict[str, float]
    provider: str
    seconds: dict[str, float] = field(default_factory=dict)
    model_sha256: str | None = None
    warnings: list[str] = field(default_factory=list)  # what the user should know about this result


def region_maps(image: Image, mask: np.ndarray | None, region_params: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Per-pixel multiplier maps: ``value`` inside the mask, 1 outside, one map per named parameter.

    A 2-D mask applies to every slice of a volume.
    """
    if not region_params:
        return {}
    if mask is None:
        raise QuietLensError("region parameters need a mask (--mask FILE)")
    spatial = tuple(n for n, axis in zip(image.data.shape, image.axes) if axis in "ZHW")
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] in (1, 3, 4) and len(spatial) == 2:
        mask = mask.max(axis=-1)
    if mask.shape != spatial[-mask.ndim:]:
        raise InvalidImageError(f"the mask's shape {mask.shape} does not match the image's {spatial}")
    inside = np.broadcast_to(mask > 0, spatial)
    return {name: np.where(inside, np.float32(value), np.float32(1.0)) for name, value in region_params.items()}


def load_mask(path: str | Path) -> np.ndarray:
    """A mask image (any photo format, or a DICOM/NIfTI label volume): non-zero pixels are inside."""
    mask = io.load(path)
    data = mask.data[..., 0] if mask.axes.endswith("C") else mask.data
    return data != 0


def provenance(method: Method, params: Mapping[str, float], state: Any) -> dict[str, Any]:
    """What produced an output; savers that can record it (DICOM, NIfTI) write it into the file."""
    return {"software": "QuietLens", "version": __version__, "method": method.name, "params": dict(params),
            "model_sha256": method.model_sha256(state)}


def run(image: Image, method: Method, state: Any, params: Mapping[str, float],
        regions: Mapping[str, np.ndarray] | None, progress: Progress, cancel: CancelToken) -> Image:
    """``method.run`` with ``state`` from its ``prepare``, the output stamped with its provenance. Every
    result QuietLens keeps comes through here, first runs and slider re-runs alike."""
    out = method.run(image, state, params, regions, progress, cancel)
    return out.with_data(out.data, meta={**out.meta, "provenance": provenance(method, params, state)})


def denoise(
    image: Image,
    method: str | Method,
    params: Mapping[str, str | float] | None = None,
    regions: Mapping[str, np.ndarray] | None = None,
    provider: str = "auto",
    progress: Progress = no_progress,
    cancel: CancelToken | None = None,
    prepare_on: Image | None = None,
) -> Result:
    """Run ``method`` on an in-memory image. Parameters are checked before any work starts.

    ``prepare_on``: the image ``prepare`` measures, when ``image`` is a crop of it (a preview) and the
    method's ``whole_image_prepare`` says its state applies to crops; otherwise ``image`` itself.
    """
    from . import runtime

    cancel = cancel or CancelToken()
    m = get(method) if isinstance(method, str) else method
    check_kind(m, image)
    values = resolve_params(m, params or {})
    if not np.isfinite(image.data).all():
        raise InvalidImageError("the image contains NaN or infinite values", image.source)
    chosen = runtime.resolve_provider(provider)
    t0 = time.perf_counter()
    whole = prepare_on if prepare_on is not None and m.whole_image_prepare else image
    state = m.prepare(whole, sub_progress(progress, 0.0, 0.5), cancel, provider=chosen)
    t1 = time.perf_counter()
    out = run(image, m, state, values, regions, sub_progress(progress, 0.5, 1.0), cancel)
    t2 = time.perf_counter()
    notes = m.warnings(state) + [w for w in [unchanged_warning(image, out)] if w]
    return Result(out, state, m.name, values, chosen, {"prepare": t1 - t0, "run": t2 - t1},
                  out.meta["provenance"]["model_sha256"], notes)


def unchanged_warning(before: Image, after: Image) -> str | None:
    """A warning when ``after`` barely differs from ``before`` although ``before``'s own noise estimate
    (:func:`.noise.estimate.pixel_sigma`) says there is noise to remove; None otherwise.

    Any method can end up there (a strength of 0, a fit that found nothing to do); the user must not
    take an unchanged image for a denoised one.
    """
    from .noise.estimate import pixel_sigma

    if after.data.shape != before.data.shape:
        return None
    planes = before.slices()
    if planes.ndim == 4:  # colour: every channel is a plane
        planes = np.moveaxis(planes, -1, 1).reshape(-1, *planes.shape[1:3])
    if before.kind == "raw":  # a mosaic: each of the four CFA sites is a plane
        h, w = planes.shape[1] // 2 * 2, planes.shape[2] // 2 * 2
        planes = np.concatenate([planes[:, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1)])
    # A few million pixels tell the noise level: at most 8 planes, central crops of at most 1024².
    picks = planes[np.unique(np.linspace(0, len(planes) - 1, min(len(planes), 8)).astype(int))]
    h, w = picks.shape[1:]
    y0, x0 = max(0, (h - 1024) // 2), max(0, (w - 1024) // 2)
    sample = picks[:, y0:y0 + 1024, x0:x0 + 1024]
    sigma = pixel_sigma(sample)
    lo, hi = np.percentile(sample, (0.5, 99.5))
    if not sigma > NOISE_FLOOR * max(float(hi - lo), 1e-30):
        return None
    step = max(1, before.data.size // 4_000_000)
    diff = after.data.reshape(-1)[::step].astype(np.float64) - before.data.reshape(-1)[::step]
    change = float(np.sqrt(np.mean(diff * diff)))
    if change >= UNCHANGED_FRACTION * sigma:
        return None
    return (f"the result barely differs from the input: it changed by {change:.3g} (RMS) while the input's "
            f"own noise level is about {sigma:.3g} (image units), so almost none of that noise was removed. "
            f"Raise the strength or the method's parameters, or try another method (quietlens methods).")


def denoise_file(
    src: str | Path,
    dst: str | Path,
    method: str | Method,
    params: Mapping[str, str | float] | None = None,
    *,
    mask: str | Path | None = None,
    region_params: Mapping[str, float] | None = None,
    provider: str = "auto",
    overwrite: bool = False,
    progress: Progress = no_progress,
    cancel: CancelToken | None = None,
) -> Result:
    """Denoise one file into ``dst`` (atomic; never over the input). Returns the result with timings."""
    src, dst = Path(src), Path(dst)
    io.check_destination(src, dst, overwrite)  # the input, or an output it may not replace: before any work
    method = get(method) if isinstance(method, str) else method
    region_params = check_region_params(method, region_params or {})
    t0 = time.perf_counter()
    image = io.load(src)
    io.output_family(image, dst)  # fail on an impossible output format before minutes of work
    t_load = time.perf_counter() - t0
    regions = region_maps(image, load_mask(mask) if mask else None, region_params)
    result = denoise(image, method, params, regions, provider, sub_progress(progress, 0.0, 0.98), cancel)
    t0 = time.perf_counter()
    io.save(result.image, dst, overwrite=overwrite)
    result.seconds.update(load=t_load, save=time.perf_counter() - t0)
    progress(1.0, "saved")
    return result
