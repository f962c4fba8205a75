"""ONNX Runtime access: provider choice, thread count and cached sessions.

Every graph QuietLens runs goes through :func:`session`. Models named by id come from the model
catalogue (:mod:`.catalogue`); their sha256 is checked on the very bytes handed to ONNX Runtime, so a
damaged or swapped file is refused rather than silently run.

Environment: ``QUIETLENS_PROVIDER`` (auto|cuda|cpu) overrides ``"auto"``; ``QUIETLENS_THREADS`` sets the
intra-op threads unless :func:`set_threads` was called.
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from . import catalogue
from .errors import ModelError, QuietLensError

PROVIDERS = ("cuda", "cpu")
_ORT_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
_CACHE_SIZE = 4  # sessions kept alive: each may hold a memory arena as large as its biggest run

_lock = threading.Lock()
_threads_override: int | None = None
_sessions: OrderedDict[tuple[str, str, int | None], "Session"] = OrderedDict()


# -- providers and threads ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _cuda_usable() -> bool:
    """Whether a session really runs on CUDA. onnxruntime-gpu lists the provider even without a driver
    and then falls back to the CPU, so only a real session on a tiny graph tells."""
    if _ORT_NAMES["cuda"] not in ort.get_available_providers():
        return False
    try:
        if hasattr(ort, "preload_dlls"):  # finds CUDA/cuDNN from pip wheels or torch (ORT >= 1.21)
            ort.preload_dlls()
        from onnx import TensorProto, helper

        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", io[:1], io[1:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.log_severity_level = 4
        with warnings.catch_warnings():  # ORT warns when it falls back to the CPU: that is the answer here
            warnings.simplefilter("ignore")
            sess = ort.InferenceSession(model.SerializeToString(), options, providers=[_ORT_NAMES["cuda"]])
        sess.run(None, {"x": np.zeros(1, np.float32)})
        return sess.get_providers()[0] == _ORT_NAMES["cuda"]
    except Exception:  # any failure to start the GPU means: not usable
        return False


def available_providers() -> list[str]:
    """The providers that work here, best first: ``["cuda", "cpu"]`` or ``["cpu"]``."""
    return ["cuda", "cpu"] if _cuda_usable() else ["cpu"]


def resolve_provider(requested: str = "auto") -> str:
    """``"auto"`` (or ``$QUIETLENS_PROVIDER``) → ``"cuda"`` when usable, else ``"cpu"``; ``"cuda"`` must work."""
    choice = (requested or "auto").strip().lower()
    if choice == "auto":
        choice = os.environ.get("QUIETLENS_PROVIDER", "auto").strip().lower() or "auto"
    if choice == "auto":
        return available_providers()[0]
    if choice not in PROVIDERS:
        raise QuietLensError(f"unknown provider {choice!r} (use auto, cuda or cpu)")
    if choice == "cuda" and not _cuda_usable():
        if _ORT_NAMES["cuda"] in ort.get_available_providers():
            why = (f"onnxruntime-gpu {ort.__version__} is installed but could not start on the GPU "
                   "(no NVIDIA driver, or CUDA/cuDNN libraries missing or of another major version)")
        else:
            why = f"the installed onnxruntime {ort.__version__} is the CPU-only build"
        raise QuietLensError(
            f"CUDA was requested but {why}. Install onnxruntime-gpu matching your CUDA and cuDNN "
            "(pip uninstall onnxruntime; pip install onnxruntime-gpu), see the CUDA section of the README, "
            "or use --provider auto or cpu."
        )
    return choice


def set_threads(n: int | None) -> None:
    """Intra-op threads for sessions created from now on; ``None`` returns to the default
    (``$QUIETLENS_THREADS``, else ONNX Runtime's own choice of one per physical core)."""
    global _threads_override
    if n is not None and (not isinstance(n, int) or n < 1):
        raise QuietLensError(f"the number of threads must be a positive integer, got {n!r}")
    _threads_override = n


def _threads() -> int | None:
    if _threads_override is not None:
        return _threads_override
    text = os.environ.get("QUIETLENS_THREADS", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise QuietLensError(f"QUIETLENS_THREADS must be a positive integer, got {text!r}")
    return int(text)


def describe() -> dict[str, Any]:
    """Runtime facts for ``quietlens info --providers``, ``--version`` and the GUI (JSON-serialisable)."""
    facts: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "available_providers": available_providers(),
        "onnxruntime_providers": ort.get_available_providers(),  # what the build offers, usable or not
    }
    try:
        facts["provider"] = resolve_provider("auto")
    except QuietLensError as exc:  # a bad QUIETLENS_PROVIDER must not break the info command
        facts["provider"], facts["provider_error"] = None, str(exc)
    try:
        facts["threads"] = _threads() or "default"
    except QuietLensError as exc:
        facts["threads"], facts["threads_error"] = None, str(exc)
    return facts


# -- sessions ----------------------------------------------------------------------------------------

_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


class Session:
    """A loaded graph on one provider. Not created directly: use :func:`session`."""

    def __init__(self, inner: ort.InferenceSession, name: str):
        self._inner = inner
        self.name = name
        # ORT silently drops to the CPU when CUDA fails to start, so report what it actually uses.
        self.provider = "cuda" if inner.get_providers()[0] == _ORT_NAMES["cuda"] else "cpu"
        self.input_names = [i.name for i in inner.get_inputs()]
        self.output_names = [o.name for o in inner.get_outputs()]
        self._types = {i.name: _NUMPY_TYPES.get(i.type, np.float32) for i in inner.get_inputs()}

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs, in ``output_names`` order. Inputs are cast to the graph's type (float32) and made
        contiguous."""
        missing, unknown = set(self.input_names) - set(feeds), set(feeds) - set(self.input_names)
        if missing or unknown:
            raise QuietLensError(f"{self.name} takes inputs {', '.join(self.input_names)}; "
                                 f"got {', '.join(sorted(feeds)) or 'none'}")
        arrays = {k: np.ascontiguousarray(v, dtype=self._types[k]) for k, v in feeds.items()}
        try:
            return self._inner.run(None, arrays)
        except Exception as exc:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items())
            raise ModelError(f"{self.name} failed on {shapes}: {_first_line(exc)}") from exc

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Shortcut for graphs with one input and one output."""
        if len(self.input_names) != 1 or len(self.output_names) != 1:
            raise TypeError(f"{self.name} has inputs {self.input_names} and outputs {self.output_names}; "
                            "use run()")
        return self.run({self.input_names[0]: x})[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _model_bytes(model: str | Path | bytes) -> tuple[bytes, str, str, Path | None]:
    """The serialized graph, its sha256, a name for messages and its file (if any); ids are verified."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        return data, hashlib.sha256(data).hexdigest(), "the in-memory model", None
    if isinstance(model, os.PathLike):
        path = Path(model)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelError("the model file is missing", path) from None
        except OSError as exc:
            raise ModelError(f"the model file cannot be read ({exc.strerror or exc})", path) from exc
        return data, hashlib.sha256(data).hexdigest(), path.name, path
    entry = catalogue.entry(model)
    data = catalogue.verified_bytes(entry)
    return data, entry.sha256.lower(), f"model {model!r}", entry.path


def session(model: str | Path | bytes, provider: str = "auto") -> Session:
    """A cached session for a manifest id (str), an .onnx file (Path) or a serialized graph (bytes)."""
    chosen = resolve_provider(provider)
    data, digest, name, path = _model_bytes(model)
    threads = _threads()
    key = (digest, chosen, threads)
    with _lock:
        if key in _sessions:
            _sessions.move_to_end(key)
            return _sessions[key]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's warnings are not actionable for users
    if threads:
        options.intra_op_num_threads = threads
    # With CUDA, the CPU stays listed so that ops CUDA lacks still run (ORT assigns them node by node).
    providers = [_ORT_NAMES[p] for p in PROVIDERS[PROVIDERS.index(chosen):]]
    try:
        inner = ort.InferenceSession(data, options, providers=providers)
    except Exception as exc:
        reason = f"not a valid ONNX model ({_first_line(exc)})"
        raise ModelError(reason if path is not None else f"{name} is {reason}", path) from exc
    sess = Session(inner, name)
    with _lock:
        sess = _sessions.setdefault(key, sess)  # another thread may have built the same one meanwhile
        _sessions.move_to_end(key)
        while len(_sessions) > _CACHE_SIZE:
            _sessions.popitem(last=False)
    return sess
