"""An interactive edit of one image, without Qt: prepare once, re-run on parameter and region changes.

The desktop app is a view over a :class:`Session`, as napari's ViewerModel is to its Qt widgets. A *target*
is either the whole image, ``FULL = ("full",)``, or a preview crop of the view plane on screen,
``("preview", view, core, crop)``: whole tiles of a fixed grid (the *core*, what is shown) plus the context
the method needs (the *crop*, what it sees; see :func:`viewmath.preview_boxes`). The first run of a method
on a target prepares it (fit, noise estimate) and keeps the state; later runs with other parameters or
regions only call ``run`` with that state.

Every result comes through :func:`pipeline.run`, so it always carries its provenance (method, parameters,
model hash), and :meth:`Session.save` writes the full-image result of the latest run.

A session runs on the calling thread (the app calls it from a worker thread), one run at a time.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import io, pipeline, regions, viewmath
from .errors import QuietLensError
from .image import Image
from .methods import Method, NoiseModel, resolve_params
from .progress import CancelToken, Progress, no_progress

FULL = ("full",)
KEEP_STATES = 2  # prepared states kept per image: e.g. the preview's and the full image's


@dataclass
class Outcome:
    """One finished run. ``result`` is always full-size: a preview is pasted into a copy of the input."""

    target: tuple
    method: Method
    params: dict[str, float]
    result: Image
    provider: str  # the provider that ran (resolved: "cpu" or "cuda", never "auto")
    seconds: dict[str, float]
    reused_state: bool  # True when only ``run`` ran (a parameter or region change)
    state: Any = field(repr=False, default=None)  # the method's prepared state
    warnings: list[str] = field(default_factory=list)

    @property
    def noise(self) -> NoiseModel | None:
        return self.method.noise_model(self.state)

    def maps(self) -> dict[str, np.ndarray]:
        """The method's named maps for this result (e.g. Filter2Noise's sigma maps); computed on demand."""
        return self.method.artifacts(self.state)


class Session:
    """The edit of one image: cached method states per target and the latest result."""

    def __init__(self, image: Image):
        self.image = image
        self.states: OrderedDict[tuple, Any] = OrderedDict()
        self._providers: dict[tuple, str] = {}  # the resolved provider each state was prepared on
        self._lock = threading.Lock()
        self.last: Outcome | None = None

    @staticmethod
    def state_key(method: Method, provider: str, target: tuple) -> tuple:
        return (method.name, method.family, provider, target)

    def prepared(self, method: Method, provider: str, target: tuple) -> bool:
        """Whether a run on ``target`` would only re-run (no prepare)."""
        with self._lock:
            return self.state_key(method, provider, target) in self.states

    def preview_target(self, method: Method, view: viewmath.View, visible: tuple[int, int, int, int]) -> tuple:
        """The preview target for the ``visible`` box (y0, x0, y1, x1) of ``view``'s plane; FULL when
        that would be the whole of a 2-D image anyway."""
        plane = viewmath.plane_shape(self.image, view.orientation)
        halo, align = method.preview_context
        core, box = viewmath.preview_boxes(plane, visible, halo=max(viewmath.PREVIEW_HALO, halo), align=align)
        if "Z" not in self.image.axes and core == (0, 0, *plane):
            return FULL
        return ("preview", view, core, box)

    def run(self, method: Method, params: Mapping[str, str | float], region_list: list[regions.Region],
            target: tuple = FULL, provider: str = "auto", progress: Progress = no_progress,
            cancel: CancelToken | None = None) -> Outcome:
        """Denoise ``target`` with ``method``; prepares only the first time for this method, provider and
        target. Parameters and regions are checked before any work starts."""
        cancel = cancel or CancelToken()
        t0 = time.perf_counter()
        values = resolve_params(method, params)
        names = [p.name for p in regions.regional_params(method.params)]
        for region in region_list:  # the limits of --region on the command line (other methods' keys wait)
            regions.check_region_params(method, {k: v for k, v in region.multipliers.items() if k in names})
        image = self.image
        full = target == FULL
        maps = regions.region_maps(image, region_list, names)
        sub = image
        if not full:
            _, view, _, box = target
            sub, maps = viewmath.crop(image, view, box), viewmath.crop_maps(maps, image, view, box)
        key = self.state_key(method, provider, target)
        with self._lock:
            reuse = key in self.states
            state, used = self.states.get(key), self._providers.get(key, provider)
        if reuse:
            progress(0.0, "running (parameters changed)")
            out = pipeline.run(sub, method, state, values, maps or None, progress, cancel)
            seconds, warnings = {"run": time.perf_counter() - t0}, []
        else:
            res = pipeline.denoise(sub, method, values, maps or None, provider, progress, cancel,
                                   prepare_on=None if full else image)
            out, state, used, seconds = res.image, res.state, res.provider, dict(res.seconds)
            warnings = res.warnings
        result = out if full else viewmath.paste(image, target[1], out, target[2], target[3])
        outcome = Outcome(target, method, values, result, used, seconds, reuse, state, warnings)
        with self._lock:
            self.states[key] = state
            self._providers[key] = used
            self.states.move_to_end(key)
            while len(self.states) > KEEP_STATES:
                self._providers.pop(self.states.popitem(last=False)[0], None)
            self.last = outcome
        return outcome

    def forget(self) -> None:
        """Drop the latest result (e.g. another method was chosen); prepared states stay cached."""
        self.last = None

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the latest full-image result (with its provenance) to ``path``, atomically."""
        last = self.last
        if last is None or last.target != FULL:
            raise QuietLensError("there is no full-image result to save yet: run the full image first", path)
        return io.save(last.result, path, overwrite=overwrite)
