"""The model catalogue: which graphs QuietLens can run, where their files are, and that they are intact.

Two manifests feed it: the one shipped in ``quietlens.assets`` (``assets/models/manifest.json``) and the
user's (``<user data dir>/models/manifest.json``, written by ``quietlens train``). A user model with a
shipped id replaces the shipped one, so retraining a shipped model takes effect.

Every entry is validated against :data:`FIELDS` when read. The shipped manifest must be valid (a broken
one is an installation error); a broken *user* manifest, or a broken entry in it, is skipped and listed by
:func:`problems`, so the shipped models keep working. An entry's ``file`` must lie in its manifest's folder.

A model *family* ``NAME`` is a teacher graph ``NAME`` plus, optionally, distilled students
``NAME.student`` and ``NAME.fast`` (:func:`graph_id`, :func:`student_id`). ``bytes_per_pixel`` is the graph's peak working memory per padded
input pixel, which sizes its tiles.

Every manifest write — shipping scripts, ``quietlens train``, graph exports — goes through :func:`add`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ModelError, QuietLensError

MANIFEST_SCHEMA = 1
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # ids double as file names
STUDENT_SUFFIX = ".student"
ROLES = ("teacher", "student", "fast")  # the graphs of a model family; ids by graph_id
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_lock = threading.Lock()
_problems: list[str] = []


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# The manifest schema: each field, whether it is required, and what its value must be.
FIELDS: dict[str, tuple[bool, str, Any]] = {
    "id": (True, "letters, digits, '.', '_' or '-'", lambda v: isinstance(v, str) and bool(MODEL_ID.match(v))),
    "file": (True, "a file name in the manifest's folder",
             lambda v: isinstance(v, str) and v not in ("", ".", "..") and Path(v).name == v and "\\" not in v),
    "sha256": (True, "64 hexadecimal digits", lambda v: isinstance(v, str) and bool(_SHA256.match(v))),
    "method": (True, "a method name", lambda v: isinstance(v, str) and bool(v)),
    "modality": (True, "an image kind", lambda v: isinstance(v, str) and bool(v)),
    "inputs": (False, "a list of {name, shape, range}", lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v)),
    "outputs": (False, "a list of {name, shape, range}", lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v)),
    "receptive_field": (False, "a whole number of pixels ≥ 0", _is_count),
    "tile_multiple": (False, "a whole number ≥ 1", lambda v: _is_count(v) and v >= 1),
    "bytes_per_pixel": (False, "a number of bytes ≥ 0", lambda v: _is_number(v) and v >= 0),
    "provenance": (False, "an object", lambda v: isinstance(v, dict)),
}


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
    bytes_per_pixel: float = 0.0  # peak memory per padded input pixel; 0 = not measured
    # How it was made: script, data recipe, seed, iterations, metrics, hardware.
    provenance: dict[str, Any] = field(default_factory=dict)
    root: Path = field(default=Path("."), repr=False, compare=False)

    @property
    def path(self) -> Path:
        return self.root / self.file

    @property
    def family(self) -> str:
        for role in ROLES[1:]:
            if self.id.endswith(f".{role}"):
                return self.id[: -len(role) - 1]
        return self.id

    def memory_per_pixel(self, default: float) -> float:
        """``bytes_per_pixel`` when the manifest measured it, else ``default`` (a conservative guess)."""
        return float(self.bytes_per_pixel) if self.bytes_per_pixel > 0 else float(default)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["root"]
        return data


def student_id(family: str) -> str:
    """The id of a family's distilled student graph."""
    return f"{family}{STUDENT_SUFFIX}"


def graph_id(family: str, role: str) -> str:
    """The id of a family's graph in ``role`` (:data:`ROLES`): the teacher is the family name itself."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return family if role == "teacher" else f"{family}.{role}"


def validate(item: Any, root: Path, manifest: Path) -> ModelEntry:
    """One manifest entry checked against :data:`FIELDS`; a clear :class:`ModelError` names what is wrong.

    Unknown keys are ignored so that a newer QuietLens may add optional fields to schema 1.
    """
    if not isinstance(item, dict):
        raise ModelError(f"a model entry must be an object, found {type(item).__name__} {item!r:.40}", manifest)
    name = item.get("id") if isinstance(item.get("id"), str) else "?"
    for key, (required, what, ok) in FIELDS.items():
        if key not in item:
            if required:
                raise ModelError(f"model entry {name!r} lacks {key}", manifest)
        elif not ok(item[key]):
            raise ModelError(f"model entry {name!r}: {key} must be {what}, found {item[key]!r:.60}", manifest)
    return ModelEntry(**{k: item[k] for k in FIELDS if k in item}, root=root)


def _read_doc(path: Path) -> dict[str, Any]:
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


def read(path: str | Path, *, lenient: bool = False) -> dict[str, ModelEntry]:
    """The entries of one manifest by id. ``lenient``: broken entries (or a broken file) are skipped and
    recorded for :func:`problems` instead of raising."""
    path = Path(path)
    try:
        items = _read_doc(path)["models"]
    except ModelError as exc:
        if not lenient:
            raise
        _problems.append(f"{exc} — its models are ignored")
        return {}
    entries: dict[str, ModelEntry] = {}
    for item in items:
        try:
            entry = validate(item, path.parent, path)
            if entry.id in entries:
                raise ModelError(f"model id {entry.id!r} appears twice", path)
        except ModelError as exc:
            if not lenient:
                raise
            _problems.append(f"{exc} — entry ignored")
            continue
        entries[entry.id] = entry
    return entries


def load(path: str | Path | None = None) -> dict[str, ModelEntry]:
    """Models by id: from ``path`` alone (strict), or by default the shipped manifest overlaid with the
    user's (whose broken parts are skipped: see :func:`problems`)."""
    if path is not None:
        return read(path)
    entries = read(packaged_manifest_path())
    user = user_manifest_path()
    with _lock:
        _problems.clear()
        if user.is_file():
            entries.update(read(user, lenient=True))
    return entries


def problems() -> list[str]:
    """What the last :func:`load` skipped in the user's manifest, one line each (empty when all is well)."""
    with _lock:
        return list(dict.fromkeys(_problems))


def families(method: str) -> list[str]:
    """The model families of ``method``: the shipped one (named like the method) first, then the rest."""
    ids = {e.family for e in load().values() if e.method == method}
    return sorted(ids, key=lambda i: (i != method, i))


def entry(model_id: str, method: str | None = None) -> ModelEntry:
    """The entry for ``model_id`` (of ``method``, when given), or a clear error listing what there is."""
    entries = load()
    found = entries.get(model_id)
    if found is None:
        known = sorted(i for i, e in entries.items() if method is None or e.method == method)
        skipped = problems()
        hint = f"; the user manifest has problems: {'; '.join(skipped)}" if skipped else ""
        raise ModelError(f"unknown model {model_id!r} (known{' ' + method if method else ''} models: "
                         f"{', '.join(known) or 'none installed'}){hint}")
    if method is not None and found.method != method:
        raise ModelError(f"model {model_id!r} was made for {found.method}, not {method}")
    return found


def verified_bytes(model: str | ModelEntry) -> bytes:
    """A model's graph, read once and checked against its manifest sha256 (the bytes to hand to ORT)."""
    e = entry(model) if isinstance(model, str) else model
    try:
        data = e.path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"the model file is missing for model {e.id!r}; reinstall QuietLens or retrain it", e.path) from None
    except OSError as exc:
        raise ModelError(f"the model file for model {e.id!r} cannot be read ({exc.strerror or exc})", e.path) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != e.sha256.lower():
        raise ModelError(f"model {e.id!r} failed its integrity check (expected sha256 {e.sha256}, got {digest}); "
                         "reinstall or retrain", e.path)
    return data


# -- locations ---------------------------------------------------------------------------------------

def packaged_manifest_path() -> Path:
    return Path(str(importlib.resources.files("quietlens.assets"))) / "models" / "manifest.json"


def user_data_dir() -> Path:
    """Where user-trained models and camera profiles live: ``$QUIETLENS_DATA``, else the platform's
    per-user data folder."""
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


# -- writing -----------------------------------------------------------------------------------------

def _write(dest: Path, data: bytes) -> None:
    from .io.files import atomic_path  # readers never see half a file, a kill leaves nothing behind

    with atomic_path(dest, overwrite=True) as tmp:
        tmp.write_bytes(data)


def _graph_io(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Names and shapes (symbolic dims as their names) of a graph's real inputs and outputs."""
    def describe_value(v: Any) -> dict[str, Any]:
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "shape": dims, "range": None}

    weights = {i.name for i in model.graph.initializer}
    inputs = [describe_value(v) for v in model.graph.input if v.name not in weights]
    return inputs, [describe_value(v) for v in model.graph.output]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def add(folder: str | Path, graph: bytes | str | Path, fields: Mapping[str, Any]) -> ModelEntry:
    """Write ``graph`` as ``folder/<id>.onnx`` and record it in ``folder/manifest.json`` (both atomic);
    an entry with the same id is replaced.

    ``fields`` holds the :class:`ModelEntry` fields except ``file`` and ``sha256``, which are derived;
    ``inputs`` and ``outputs`` default to the graph's own names and shapes. The graph must be valid ONNX.
    """
    import onnx

    folder = Path(folder)
    src = None if isinstance(graph, (bytes, bytearray)) else Path(graph)
    try:
        data = bytes(graph) if src is None else src.read_bytes()
    except OSError as exc:
        raise ModelError(f"the model file cannot be read ({exc.strerror or exc})", src) from exc
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"not a valid ONNX model ({_first_line(exc)})", src) from exc
    item = dict(fields)
    model_id = item.get("id")
    if not isinstance(model_id, str) or not MODEL_ID.match(model_id):
        raise QuietLensError(f"model id {model_id!r} must be letters, digits, '.', '_' or '-'")
    inputs, outputs = _graph_io(model)
    item.setdefault("inputs", inputs)
    item.setdefault("outputs", outputs)
    item.update(file=f"{model_id}.onnx", sha256=hashlib.sha256(data).hexdigest())
    manifest = folder / "manifest.json"
    new = validate(item, folder, manifest)
    folder.mkdir(parents=True, exist_ok=True)
    with _lock:
        if not (src is not None and new.path.exists() and new.path.samefile(src)):
            _write(new.path, data)
        try:
            doc = _read_doc(manifest)
        except ModelError:
            if manifest.exists():  # never overwrite a manifest we cannot read: it may list other models
                raise
            doc = {"schema": MANIFEST_SCHEMA, "models": []}
        same = [i for i, m in enumerate(doc["models"]) if isinstance(m, dict) and m.get("id") == model_id]
        doc["models"] = [m for i, m in enumerate(doc["models"]) if i not in same]
        doc["models"].insert(same[0] if same else len(doc["models"]), new.to_json())  # a replaced entry keeps its place
        _write(manifest, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return new


def register_user_model(graph: bytes | str | Path, fields: Mapping[str, Any]) -> ModelEntry:
    """Add a graph to the user's models folder (see :func:`add`)."""
    return add(user_manifest_path().parent, graph, fields)
