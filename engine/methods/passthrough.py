"""A plumbing method that returns its input: it exercises load → run → save in tests.

It is not a denoiser, so it is hidden from users (``user_facing = False``).
"""
from __future__ import annotations

from . import STRENGTH, Method, register


class Passthrough(Method):
    name = "passthrough"
    title = "Pass-through (no denoising)"
    summary = "returns the input unchanged; for testing the load/save path"
    kinds = ("photo", "raw", "ct", "mr", "medical")
    params = (STRENGTH,)
    user_facing = False

    def prepare(self, image, progress, cancel, provider="auto"):
        return None

    def run(self, image, state, params, regions, progress, cancel):
        cancel.check()
        progress(1.0, "done")
        return image.with_data(image.data.copy())


register(Passthrough())
