"""The method registry: every denoiser the CLI and the GUI can offer, with its parameters.

A method is an object with the :class:`Method` shape. ``prepare`` does the expensive, image-specific
work once (fitting, noise estimation); ``run`` turns the image plus the user's parameters and optional
per-pixel region maps into the result. The GUI calls ``run`` again when only a slider moved.

Region maps: ``regions`` maps a parameter name to a float32 array with the image's spatial shape
(``H, W`` or ``Z, H, W``) of per-pixel multipliers on that parameter (1 = unchanged). Every method
accepts at least ``strength`` (blend towards the input: 0 = input, 1 = full denoise).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np

from ..errors import InvalidImageError, QuietLensError
from ..image import Image
from ..progress import CancelToken, Progress


@dataclass(frozen=True)
class Param:
    """One user-facing parameter: what the CLI parses and the GUI turns into a slider."""

    name: str
    default: float
    minimum: float
    maximum: float
    doc: str
    unit: str = ""
    integer: bool = False

    def parse(self, text: str | float) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise QuietLensError(f"parameter {self.name} needs a number, got {text!r}") from None
        if not (self.minimum <= value <= self.maximum) or (self.integer and value != int(value)):
            kind = "an integer" if self.integer else "a value"
            raise QuietLensError(f"parameter {self.name} must be {kind} in [{self.minimum}, {self.maximum}], got {text}")
        return int(value) if self.integer else value


@dataclass(frozen=True)
class Option:
    """A method setting that is a choice rather than a number (e.g. which camera noise profile to use):
    fixed for a whole run, chosen before ``prepare``; the CLI offers it as ``--NAME``."""

    name: str
    default: str
    doc: str


STRENGTH = Param("strength", 1.0, 0.0, 1.0, "blend between the input (0) and the full result (1)")


class Method(Protocol):
    name: str  # CLI name, e.g. "f2n"
    title: str  # human title, e.g. "Filter2Noise"
    summary: str  # one line for `quietlens methods` and tooltips
    kinds: tuple[str, ...]  # image kinds it accepts
    params: tuple[Param, ...]
    user_facing: bool  # False for plumbing helpers that are not denoisers
    # Optional ``whole_image_prepare = True``: ``prepare`` is cheap and its state holds image-wide numbers
    # that ``run`` may apply to any crop; a preview then prepares on the whole image and equals the export.
    # Optional ``preview_context`` (halo px, origin multiple): what a preview crop needs around what it
    # shows, and how its origin must align, for its pixels to equal the export's.
    # Optional ``options`` (a tuple of :class:`Option`) with ``with_options(values) -> Method``: the
    # method configured with those choices (see :func:`get`).

    def prepare(self, image: Image, progress: Progress, cancel: CancelToken, provider: str = "auto") -> Any: ...

    def run(
        self,
        image: Image,
        state: Any,
        params: Mapping[str, float],
        regions: Mapping[str, np.ndarray] | None,
        progress: Progress,
        cancel: CancelToken,
    ) -> Image: ...


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    _REGISTRY[method.name] = method
    return method


def _load_builtin() -> None:
    """Import every module of this package once: each registers its methods on import.

    Done on first use, not at import, so `import quietlens.engine` stays fast.
    """
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def available(kind: str | None = None, include_internal: bool = False) -> list[Method]:
    _load_builtin()
    return [
        m for m in _REGISTRY.values()
        if (include_internal or m.user_facing) and (kind is None or kind in m.kinds)
    ]


def get(name: str, model: str | None = None, options: Mapping[str, str] | None = None) -> Method:
    """The method called ``name``; running the model family ``model`` (one made by ``quietlens train``)
    when given, for methods that have model families; configured with ``options`` (name → value, see
    :class:`Option`; checked here, so a bad choice fails before any work)."""
    _load_builtin()
    try:
        method = _REGISTRY[name]
    except KeyError:
        names = ", ".join(m.name for m in available()) or "none yet"
        raise QuietLensError(f"unknown method {name!r} (available: {names})") from None
    if model:
        if not hasattr(method, "with_model"):
            raise QuietLensError(f"method {name} has no choice of model")
        method = method.with_model(model)
    given = {k: v for k, v in (options or {}).items() if v is not None}
    if given:
        known = {o.name for o in getattr(method, "options", ())}
        unknown = sorted(set(given) - known)
        if unknown:
            raise QuietLensError(f"method {name} has no option {', '.join(unknown)}"
                                 + (f" (it has: {', '.join(sorted(known))})" if known else ""))
        method = method.with_options(given)
    return method


def resolve_params(method: Method, given: Mapping[str, str | float]) -> dict[str, float]:
    """Defaults overlaid with the user's values, each checked against its range."""
    known = {p.name: p for p in method.params}
    unknown = set(given) - set(known)
    if unknown:
        raise QuietLensError(
            f"method {method.name} has no parameter {', '.join(sorted(unknown))} "
            f"(it has: {', '.join(known) or 'none'})"
        )
    values = {p.name: p.default for p in method.params}
    values.update({k: known[k].parse(v) for k, v in given.items()})
    return values


def check_kind(method: Method, image: Image) -> None:
    if image.kind not in method.kinds:
        raise InvalidImageError(
            f"method {method.name} works on {', '.join(method.kinds)} images, this is a {image.kind} image",
            image.source,
        )


def blend(original: np.ndarray, result: np.ndarray, strength: float, strength_map: np.ndarray | None) -> np.ndarray:
    """``original + s·(result − original)`` with ``s = strength × map`` (map broadcast over channels)."""
    s: Any = np.float32(strength)
    if strength_map is not None:
        s = s * strength_map.astype(np.float32)
        if result.ndim == s.ndim + 1:  # HWC data, HW map
            s = s[..., None]
    return (original + s * (result - original)).astype(np.float32)
