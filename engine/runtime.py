"""ONNX Runtime access: provider choice, thread count, the model manifest and cached sessions.

Every graph QuietLens runs goes through :func:`session`. Models named by id come from a manifest
(``assets/models/manifest.json`` shipped with the package, plus ``<user data dir>/models/manifest.json``
for models trained on this machine); their sha256 is checked on the very bytes handed to ONNX Runtime,
so a damaged or swapped file is refused rather than silently run.

Environment: ``QUIETLENS_PROVIDER`` (auto|cuda|cpu) overrides ``"auto"``; ``QUIETLENS_THREADS`` sets the
intra-op threads unless :func:`set_threads` was called; ``QUIETLENS_DATA`` moves the user data dir.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import json
import os
import re
import sys
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from .errors import ModelError, QuietLensError

PROVIDERS = ("cuda", "cpu")
_ORT_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
MANIFEST_SCHEMA = 1
_CACHE_SIZE = 4  # sessions kept alive: each may hold a memory arena as large as its biggest run
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # ids double as file names

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


# -- manifest ----------------------------------------------------------------------------------------

@dataclass
class ModelEntry:
    """One graph in a manifest. ``file`` is relative to the manifest's folder (``root``)."""

    id: str
    file: str
    sha256: str
    method: str
    modality: str
    inputs: list[dict[str, Any]] = field(default_factory=list)  # {name, shape, range}
    outputs: list[dict[str, Any]] = field(default_factory=list)
    receptive_field: int = 0  # radius in pixels: the tiling halo needed for exact tiled results
    tile_multiple: int = 1  # height and width fed to the graph must be multiples of this
    # How it was made: script, data recipe, seed, iterations, metrics, hardware.
    provenance: dict[str, Any] = field(default_factory=dict)
    root: Path = field(default=Path("."), repr=False, compare=False)

    @property
    def path(self) -> Path:
        return self.root / self.file

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["root"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], root: Path, manifest: Path) -> "ModelEntry":
        names = {f.name for f in dataclasses.fields(cls)} - {"root"}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        missing = required - set(data)
        if missing:
            raise ModelError(f"model entry {data.get('id', '?')!r} lacks {', '.join(sorted(missing))}", manifest)
        # Unknown keys are ignored so that a newer QuietLens may add optional fields to schema 1.
        return cls(**{k: v for k, v in data.items() if k in names}, root=root)


def packaged_manifest_path() -> Path:
    return Path(str(importlib.resources.files("quietlens.assets"))) / "models" / "manifest.json"


def user_data_dir() -> Path:
    """Where user-trained models live: ``$QUIETLENS_DATA``, else the platform's per-user data folder."""
    if os.environ.get("QUIETLENS_DATA"):
        return Path(os.environ["QUIETLENS_DATA"])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "quietlens"


def user_manifest_path() -> Path:
    return user_data_dir() / "models" / "manifest.json"


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError("the model manifest is missing", path) from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"the model manifest cannot be read ({exc})", path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelError("the model manifest has no 'models' list", path)
    if data.get("schema") != MANIFEST_SCHEMA:
        raise ModelError(f"the model manifest has schema {data.get('schema')!r}; this QuietLens reads "
                         f"schema {MANIFEST_SCHEMA} (update QuietLens)", path)
    return data


def _entries(path: Path) -> dict[str, ModelEntry]:
    entries: dict[str, ModelEntry] = {}
    for item in _read_manifest(path)["models"]:
        entry = ModelEntry.from_json(item, path.parent, path)
        if entry.id in entries:
            raise ModelError(f"model id {entry.id!r} appears twice", path)
        entries[entry.id] = entry
    return entries


def load_manifest(path: Path | None = None) -> dict[str, ModelEntry]:
    """Models by id: from ``path`` alone, or by default the packaged manifest overlaid with the user's
    (a user model with a packaged id replaces it, so retraining a shipped model takes effect)."""
    if path is not None:
        return _entries(Path(path))
    entries = _entries(packaged_manifest_path())
    if user_manifest_path().is_file():
        entries.update(_entries(user_manifest_path()))
    return entries


def _atomic_write(dest: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _graph_io(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Names and shapes (symbolic dims as their names) of a graph's real inputs and outputs."""
    def describe_value(v: Any) -> dict[str, Any]:
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "shape": dims, "range": None}

    weights = {i.name for i in model.graph.initializer}
    inputs = [describe_value(v) for v in model.graph.input if v.name not in weights]
    return inputs, [describe_value(v) for v in model.graph.output]


def register_user_model(onnx_path: str | Path, entry_fields: Mapping[str, Any]) -> ModelEntry:
    """Copy a graph into the user models folder and record it (with its sha256) in the user manifest.

    ``entry_fields`` holds the :class:`ModelEntry` fields except ``file`` and ``sha256``; ``inputs`` and
    ``outputs`` default to the graph's own names and shapes. An entry with the same id is replaced.
    """
    import onnx

    src = Path(onnx_path)
    data = _read_model_file(src)
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"not a valid ONNX model ({_first_line(exc)})", src) from exc
    fields = dict(entry_fields)
    model_id = str(fields.get("id", ""))
    if not _MODEL_ID.match(model_id):
        raise QuietLensError(f"model id {model_id!r} must be letters, digits, '.', '_' or '-'")
    inputs, outputs = _graph_io(model)
    fields.setdefault("inputs", inputs)
    fields.setdefault("outputs", outputs)
    fields.update(file=f"{model_id}.onnx", sha256=hashlib.sha256(data).hexdigest())

    manifest = user_manifest_path()
    manifest.parent.mkdir(parents=True, exist_ok=True)
    entry = ModelEntry.from_json(fields, manifest.parent, manifest)
    with _lock:
        if not (entry.path.exists() and entry.path.samefile(src)):
            _atomic_write(entry.path, data)
        doc = _read_manifest(manifest) if manifest.is_file() else {"schema": MANIFEST_SCHEMA, "models": []}
        doc["models"] = [m for m in doc["models"] if m.get("id") != model_id] + [entry.to_json()]
        _atomic_write(manifest, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    return entry


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


def _read_model_file(path: Path, hint: str = "") -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"the model file is missing{hint}", path) from None
    except OSError as exc:
        raise ModelError(f"the model file cannot be read ({exc.strerror or exc})", path) from exc


def _model_bytes(model: str | Path | bytes) -> tuple[bytes, str, str, Path | None]:
    """The serialized graph, its sha256, a name for messages and its file (if any); ids are verified."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        return data, hashlib.sha256(data).hexdigest(), "the in-memory model", None
    if isinstance(model, os.PathLike):
        path = Path(model)
        data = _read_model_file(path)
        return data, hashlib.sha256(data).hexdigest(), path.name, path
    entries = load_manifest()
    if model not in entries:
        known = ", ".join(sorted(entries)) or "none installed"
        raise ModelError(f"unknown model {model!r} (known models: {known})")
    entry = entries[model]
    data = _read_model_file(entry.path, f" for model {model!r}; reinstall QuietLens or retrain it")
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256.lower():
        raise ModelError(f"model {model!r} failed its integrity check (expected sha256 {entry.sha256}, "
                         f"got {digest}); reinstall or retrain", entry.path)
    return data, digest, f"model {model!r}", entry.path


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
