"""Running C-BSN/SDAP graphs through the engine's pipeline, for the photo tests and benchmarks."""
from __future__ import annotations

import numpy as np

from quietlens.engine import pipeline
from quietlens.engine.image import Image
from quietlens.engine.methods import get


def engine_outputs(method: str, model: str, network: str, images: list[np.ndarray],
                   provider: str = "cpu", **params) -> list[np.ndarray]:
    """``pipeline.denoise`` (everything a user's photo goes through) of each HWC image with a family's
    graph: ``network`` is teacher, student or fast; ``params`` the method's others (e.g. noise_scale)."""
    m = get(method).with_model(model)
    return [pipeline.denoise(Image(np.ascontiguousarray(x, dtype=np.float32), "photo", "HWC", "png"), m,
                             {"network": network, **params}, provider=provider).image.data for x in images]
