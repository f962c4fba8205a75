"""QuietLens engine: image I/O, ONNX Runtime inference, tiling, noise models, methods, batch and CLI.

No Qt here; torch is imported lazily and only where fitting or training needs it.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("quietlens")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
