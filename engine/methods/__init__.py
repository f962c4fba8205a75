"""The method registry: every denoiser the CLI and the GUI can offer, with its parameters.

Every method derives from :class:`Method`, which declares the interface and each optional capability
(with its default). ``prepare`` does the expensive, image-specific work once (fitting, noise estimation);
``run`` turns the image plus the user's parameters and optional per-pixel region maps into the result.
The GUI calls ``run`` again when only a slider moved.

Region maps: ``regions`` maps a parameter name to a float32 array with the image's spatial shape
(``H, W`` or ``Z, H, W``) of per-pixel multipliers on that parameter (1 = unchanged). Every method
accepts at least ``strength`` (blend towards the input: 0 = input, 1 = full denoise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import InvalidImageError, QuietLensError
from ..image import Image
from ..progress import CancelToken, Progress


@dataclass(frozen=True)
class Param:
    """One user-facing parameter: what the CLI parses and the GUI turns into a control.

    A numeric parameter is a slider and may be scaled per region (region maps multiply it). A *choice*
    (``choices`` names the integer values 0, 1, …) is a drop-down, accepts its names on the command line,
    and is never a per-region multiplier.
    """

    name: str
    default: float
    minimum: float
    maximum: float
    doc: str
    unit: str = ""
    integer: bool = False
    choices: tuple[str, ...] = ()

    @property
    def regional(self) -> bool:
        """Whether a region map may scale it."""
        return not self.choices

    def label(self, value: float) -> str:
        """How a value reads to people: a choice's name, else the number."""
        return self.choices[int(value)] if self.choices else f"{value:g}"

    def parse(self, text: str | float) -> float:
        if self.choices and isinstance(text, str) and text.strip().lower() in self.choices:
            return self.choices.index(text.strip().lower())
        try:
            value = float(text)
        except (TypeError, ValueError):
            options = f"one of {', '.join(self.choices)}" if self.choices else "a number"
            raise QuietLensError(f"parameter {self.name} needs {options}, got {text!r}") from None
        if not (self.minimum <= value <= self.maximum) or (self.integer and value != int(value)):
            if self.choices:
                raise QuietLensError(f"parameter {self.name} must be one of {', '.join(self.choices)} "
                                     f"(or 0–{len(self.choices) - 1}), got {text}")
            kind = "an integer" if self.integer else "a value"
            raise QuietLensError(f"parameter {self.name} must be {kind} in [{self.minimum}, {self.maximum}], got {text}")
        return int(value) if self.integer else value


def choice(name: str, options: tuple[str, ...], doc: str, default: int = 0) -> Param:
    """A parameter picking one of ``options`` (lower-case names), stored as its index."""
    return Param(name, default, 0, len(options) - 1, doc, integer=True, choices=options)


@dataclass(frozen=True)
class Option:
    """A method setting whose values are not a fixed list (e.g. a camera noise profile: a name from the
    user's folder or a path), so neither a slider nor a choice :class:`Param`: fixed for a whole run, set
    before ``prepare`` by :meth:`Method.with_options`; the CLI offers it as ``--NAME``."""

    name: str
    default: str
    doc: str


STRENGTH = Param("strength", 1.0, 0.0, 1.0, "blend between the input (0) and the full result (1)")


@dataclass(frozen=True)
class NoiseModel:
    """A method's measured noise, ``variance = K·mean + sigma²``, for the noise panel and ``info --noise``.

    ``means``/``variances`` are the measured scatter (same units as ``K`` and ``sigma²``); ``source`` says
    where the model came from (e.g. "blind estimate (classical)", "profile …"); ``alternative`` is another
    model of the same image worth showing beside it (e.g. the blind estimate next to a camera profile).
    """

    K: float | None
    sigma: float | None
    means: np.ndarray | None = None
    variances: np.ndarray | None = None
    units: str = ""
    source: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)  # e.g. estimator, R², samples
    alternative: "NoiseModel | None" = None

    def line(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The model's variance at the ends of the measured range (0–1 without a scatter)."""
        if self.K is None or self.sigma is None:
            return None
        lo, hi = (float(self.means.min()), float(self.means.max())) if self.means is not None and self.means.size \
            else (0.0, 1.0)
        xs = np.array([lo, hi])
        return xs, self.K * xs + self.sigma ** 2


class Method:
    """What every denoiser is. Subclasses set the descriptive attributes and implement ``prepare`` and
    ``run``; each optional capability below has a default, so callers never probe for attributes.

    ``prepare`` does the expensive, image-specific work once (fitting, noise estimation); ``run`` turns the
    image plus the user's parameters and optional per-pixel region maps into the result, and is called again
    when only a slider moved.
    """

    name: str  # CLI name, e.g. "f2n"
    title: str  # human title, e.g. "Filter2Noise"
    summary: str  # one line for `quietlens methods` and tooltips
    kinds: tuple[str, ...]  # image kinds it accepts
    params: tuple[Param, ...] = (STRENGTH,)
    user_facing: bool = True  # False for plumbing helpers that are not denoisers
    # ``prepare`` is cheap and its state holds image-wide numbers that ``run`` may apply to any crop: a
    # preview then prepares on the whole image and equals the export.
    whole_image_prepare: bool = False
    # What a preview crop needs around what it shows (halo px) and how its origin must align, for its
    # pixels to equal the export's.
    preview_context: tuple[int, int] = (0, 2)
    family: str = ""  # the model family it runs ("" when it has no choice of model)
    options: tuple[Option, ...] = ()  # choices fixed for a whole run (e.g. a noise profile): see with_options

    def prepare(self, image: Image, progress: Progress, cancel: CancelToken, provider: str = "auto") -> Any:
        raise NotImplementedError

    def run(self, image: Image, state: Any, params: Mapping[str, float], regions: Mapping[str, np.ndarray] | None,
            progress: Progress, cancel: CancelToken) -> Image:
        raise NotImplementedError

    def preview_whole(self, image: Image) -> bool:
        """Whether a preview must process all of ``image`` to equal the export (e.g. a method that filters
        a volume in 3-D cannot preview one plane's crop)."""
        return False

    def families(self) -> list[str]:
        """The model families it can run, the shipped one first (empty: no choice of model)."""
        return []

    def with_model(self, model: str) -> "Method":
        """The same method running the model family ``model`` (e.g. one made by ``quietlens train``)."""
        raise QuietLensError(f"method {self.name} has no choice of model")

    def with_options(self, values: Mapping[str, str]) -> "Method":
        """The same method configured with its :attr:`options` (names checked by :func:`get`)."""
        raise QuietLensError(f"method {self.name} has no options")

    def model_sha256(self, state: Any) -> str | None:
        """The sha256 of the graph the last ``run`` with ``state`` executed, for the output's provenance."""
        return None

    def artifacts(self, state: Any) -> dict[str, np.ndarray]:
        """Named maps worth showing or saving (e.g. Filter2Noise's sigma maps); {} when none."""
        return {}

    def warnings(self, state: Any) -> list[str]:
        """What ``prepare`` found the user must be told (e.g. a noise profile that does not fit the image)."""
        return []

    def noise_model(self, state: Any) -> NoiseModel | None:
        """The noise model ``prepare`` measured, if the method has one."""
        return None


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
        method = method.with_model(model)
    given = {k: v for k, v in (options or {}).items() if v is not None}
    if given:
        known = {o.name for o in method.options}
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
    """``original + s·(result − original)`` with ``s = strength × map`` clipped to [0, 1] (map broadcast over
    channels): every method blends the same way, and no region pushes past the result or away from it."""
    s: Any = np.float32(strength)
    if strength_map is not None:
        s = np.clip(s * strength_map.astype(np.float32), 0.0, 1.0)
        if result.ndim == s.ndim + 1:  # HWC data, HW map
            s = s[..., None]
    return (original + s * (result - original)).astype(np.float32)
