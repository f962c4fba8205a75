"""Hostile use, tried systematically: the data-safety guarantees checked case by case through the CLI.

Each case builds a sandbox from real files (a real photo, the real 40-slice MR series, pydicom's CT),
does what a careless or hostile user would (overwrite a folder of documents, kill a run at the worst
moment, point a batch at a folder around its input, feed multi-page, damaged, mislabelled or absurdly
declared files, pass impossible options, close the pipe, press Ctrl-C), and checks the invariants:

* inputs are never modified (bytes and modification times);
* nothing QuietLens did not write is changed or deleted: every file outside the case's outputs stays;
* no temporary or set-aside name is left once a run ends (or, after a kill, once the same command ran
  again), and no kill loses both the old and the new output;
* every output that exists loads whole;
* every refusal is a clean error: the expected exit status, one line ``quietlens: error: …`` (argparse's
  usage for malformed options), never a traceback.

Prints, per group, the cases tried and the failures, then each failure; exits 1 if there is any.

    .venv/bin/python tests/benchmarks/abuse.py [--kills 12] [--only GROUP ...] [--keep]

Permission cases (unreadable or read-only folders) run under ``setpriv`` without CAP_DAC_OVERRIDE when
run as root, and are skipped where that is impossible.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io as text_io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("QUIETLENS_SHARED_DATA") or REPO.parent / "shared" / "data")
CLI = [sys.executable, "-m", "quietlens.engine.cli"]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/killhook.py
from killhook import interrupt_batch, kill_env  # noqa: E402

from quietlens.engine import batch, io  # noqa: E402
from quietlens.engine.cli import main  # noqa: E402

# -- running the CLI and looking at a sandbox ----------------------------------------------------

def run(*argv, sub: bool = False, env: dict | None = None, prefix: list[str] | None = None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``quietlens ARGV``: in this process, or a fresh one when asked."""
    argv = [str(a) for a in argv]
    if sub or env or prefix:
        proc = subprocess.run([*(prefix or []), *CLI, *argv], capture_output=True, text=True, timeout=600,
                              env={**os.environ, **(env or {})})
        return proc.returncode, proc.stdout, proc.stderr
    out, err = text_io.StringIO(), text_io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code
            except BaseException:  # noqa: BLE001 - an escaped exception is exactly what is looked for
                code = "raised"
                err.write(traceback.format_exc())
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue()


def clean_error(err: str) -> str | None:
    """Why ``err`` is not one clean error line (None when it is)."""
    if "Traceback" in err or "Exception ignored" in err:
        return "a traceback: " + err.strip().splitlines()[-1][:200]
    # What a terminal shows: a progress bar that erased itself with carriage returns leaves nothing.
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        return "no message"
    if lines[0].startswith("usage:"):  # argparse: usage, then its one error line
        return None if "error:" in lines[-1] else f"unexpected: {lines[-1]}"
    if len(lines) != 1 or not lines[0].startswith("quietlens: "):
        return f"{len(lines)} lines: {' | '.join(lines)[:300]}"
    return None


def digest(path: Path) -> tuple[str, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns


def snapshot(root: Path, skip: list[Path]) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``root`` except the ``skip`` paths, what they hold and the folders on
    their way (which an output may create): path -> (sha256, mtime)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents or path in s.parents for s in skip):
            continue
        out[str(path.relative_to(root))] = digest(path) if path.is_file() and not path.is_symlink() else ("", 0)
    return out


class Sandbox:
    """A case's folder: ``in/`` holds inputs, anything else is the user's; ``outputs`` may change."""

    def __init__(self, root: Path):
        self.root, self.inputs = root, root / "in"
        self.inputs.mkdir()
        self.outputs: list[Path] = []
        self.before: dict = {}

    def freeze(self, *outputs: Path) -> None:
        self.outputs = [Path(o) for o in outputs]
        self.before = snapshot(self.root, self.outputs)

    def problems(self, planted: set[str] = frozenset()) -> list[str]:
        found = []
        after = snapshot(self.root, self.outputs)
        changed = [k for k in self.before if after.get(k) != self.before[k]]
        added = [k for k in after if k not in self.before]
        if changed:
            found.append(f"changed or deleted outside the outputs: {changed[:4]}")
        if added:
            found.append(f"new files outside the outputs: {added[:4]}")
        leftovers = [str(p.relative_to(self.root)) for p in self.root.rglob(".*")
                     if io.PARTIAL_NAME.match(p.name) and p.name not in planted]
        if leftovers:
            found.append(f"leftovers: {leftovers[:4]}")
        for out in self.outputs:
            if out.exists() and not any(io.PARTIAL_NAME.match(p.name) for p in [out, *out.parents]):
                found += whole(out)
        return found


def whole(out: Path) -> list[str]:
    """An existing output must load whole (a series folder as one volume, a folder of outputs file by file)."""
    if out.is_dir() and any(p.suffix == ".dcm" for p in out.iterdir()):
        targets = [out]
    else:
        targets = [p for p in ([out] if out.is_file() else out.rglob("*"))
                   if p.is_file() and io.full_suffix(p) in io.INPUT_SUFFIXES and not io.PARTIAL_NAME.match(p.name)]
    problems = []
    for t in targets:
        try:
            io.load(t)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"output {t.name} does not load: {exc}")
    return problems


def expect(result: tuple, codes: set, must_say: str = "") -> list[str]:
    code, out, err = result
    found = []
    if code not in codes:
        found.append(f"exit {code}, expected {sorted(codes, key=str)}: {(err or out).strip()[-300:]}")
    if code not in (0,):
        why = clean_error(err) if code in (1, 2, "raised") and err.strip() else None
        if code == "raised":
            why = why or "an exception escaped"
        if why:
            found.append(why)
    if must_say and must_say not in err + out:
        found.append(f"the message does not say {must_say!r}: {(err or out).strip()[-300:]}")
    return found


# -- the real files every case starts from --------------------------------------------------------

class Seeds:
    def __init__(self, root: Path):
        from pydicom.data import get_testdata_file

        self.root = root
        root.mkdir()
        pairs = sorted((SHARED / "srgb_pairs").rglob("*_noisy.png"))
        if not pairs or not (SHARED / "mr_series" / "toshiba_b0").is_dir():
            sys.exit(f"the real development captures are needed: {SHARED} (set QUIETLENS_SHARED_DATA)")
        self.photos = pairs
        image = io.load(pairs[0])
        self.photo = io.save(image.with_data(image.data[:96, :96]), root / "photo.png")
        self.pixels = (io.load(self.photo).data * 255).astype(np.uint8)
        self.series = SHARED / "mr_series" / "toshiba_b0"
        self.ct = Path(get_testdata_file("CT_small.dcm"))
        self.ours = root / "ours"  # a series QuietLens wrote: the one kind of folder it may replace
        assert run("denoise", self.series, "-o", self.ours, "--method", "passthrough", "-q")[0] == 0

    def copy_series(self, dst: Path) -> Path:
        shutil.copytree(self.series, dst)
        return dst


Case = tuple[str, str, Callable[[Sandbox, Seeds], list[str]]]
CASES: list[Case] = []


def case(group: str, name: str):
    def register(fn):
        CASES.append((group, name, fn))
        return fn

    return register


def ordinary_user() -> list[str] | None:
    """A prefix under which permissions apply even for root (setpriv drops CAP_DAC_OVERRIDE); None if impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"] if setpriv else None


# -- 1. --overwrite of an existing folder ---------------------------------------------------------

def _overwrite_refused(make_target: Callable[[Sandbox, Seeds], Path], input_of: Callable | None = None):
    def fn(box: Sandbox, seeds: Seeds) -> list[str]:
        src = input_of(box, seeds) if input_of else seeds.copy_series(box.inputs / "series")
        target = make_target(box, seeds)
        box.freeze()  # refused: nothing anywhere may change
        return expect(run("denoise", src, "-o", target, "--method", "passthrough", "--overwrite", "-q"), {2}) \
            + box.problems()
    return fn


def _docs(box, seeds):
    (box.root / "docs").mkdir()
    (box.root / "docs" / "thesis.txt").write_text("the only copy")
    return box.root / "docs"


def _foreign_series(box, seeds):
    return seeds.copy_series(box.root / "scan")  # a real series from a scanner: not QuietLens's


def _ours_plus(extra: str):
    def make(box, seeds):
        target = box.root / "denoised"
        shutil.copytree(seeds.ours, target)
        if extra == "file":
            (target / "notes.txt").write_text("added by the user")
        elif extra == "folder":
            (target / "sub").mkdir()
            shutil.copy(seeds.ct, target / "sub" / "ct.dcm")
        elif extra == "hidden":
            (target / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        elif extra == "foreign dicom":
            shutil.copy(seeds.ct, target / "IM99999.dcm")
        return target
    return make


def _link_to_ours(box, seeds):
    shutil.copytree(seeds.ours, box.root / "real")
    os.symlink(box.root / "real", box.root / "link")
    return box.root / "link"


def _file_named_like_a_folder(box, seeds):
    (box.root / "denoised").write_text("a file where the series folder would go")
    return box.root / "denoised"


for _name, _make in (("a folder of documents", _docs), ("a scanner's series", _foreign_series),
                     ("our series plus a user file", _ours_plus("file")),
                     ("our series plus a subfolder", _ours_plus("folder")),
                     ("our series plus a hidden file", _ours_plus("hidden")),
                     ("our series plus a foreign slice", _ours_plus("foreign dicom")),
                     ("a link to our series", _link_to_ours), ("a file where the folder goes", _file_named_like_a_folder),
                     ("the folder around the input", lambda box, seeds: box.inputs),
                     ("a folder inside the input series", lambda box, seeds: box.inputs / "series" / "out"),
                     ("the input series itself", lambda box, seeds: box.inputs / "series")):
    case("overwrite", f"refused: {_name}")(_overwrite_refused(_make))

case("overwrite", "refused: a photo over its own input")(_overwrite_refused(
    lambda box, seeds: box.inputs / "photo.png",
    lambda box, seeds: Path(shutil.copy(seeds.photo, box.inputs / "photo.png"))))
case("overwrite", "refused: a photo onto a folder named like a photo")(_overwrite_refused(
    lambda box, seeds: (box.root / "x.png").mkdir() or box.root / "x.png",
    lambda box, seeds: Path(shutil.copy(seeds.photo, box.inputs / "photo.png"))))


@case("overwrite", "allowed: a series QuietLens wrote, and an empty folder")
def _overwrite_ours(box: Sandbox, seeds: Seeds) -> list[str]:
    src = seeds.copy_series(box.inputs / "series")
    found = []
    for target in (box.root / "denoised", box.root / "empty"):
        if target.name == "denoised":
            shutil.copytree(seeds.ours, target)
        else:
            target.mkdir()
        box.freeze(target)
        found += expect(run("denoise", src, "-o", target, "--method", "passthrough", "--overwrite", "-q"), {0})
        found += box.problems()
        if len(list(target.iterdir())) != 40:
            found.append(f"{target.name}: {len(list(target.iterdir()))} files, not the 40 slices")
    return found


@case("overwrite", "allowed: a photo over an earlier output file")
def _overwrite_file(box: Sandbox, seeds: Seeds) -> list[str]:
    src = Path(shutil.copy(seeds.photo, box.inputs / "photo.png"))
    out = box.root / "out.png"
    (out).write_bytes(b"an earlier output")
    box.freeze(out)
    return expect(run("denoise", src, "-o", out, "--method", "passthrough", "--overwrite", "-q"), {0}) \
        + box.problems()


# -- 2 and 4. kills at the worst moments -----------------------------------------------------------

def _kill_case(point: str, series: bool):
    def fn(box: Sandbox, seeds: Seeds) -> list[str]:
        src = seeds.copy_series(box.inputs / "series") if series else Path(shutil.copy(seeds.photo, box.inputs / "p.png"))
        out_dir = box.root / "out"
        out_dir.mkdir()
        out = out_dir / ("denoised" if series else "p.png")
        found = []
        first = ["denoise", src, "-o", out, "--method", "passthrough", "--param", "strength=0.5", "-q"]
        if point in ("aside", "delete-old", "folder-replace", "file-replace"):
            found += expect(run(*first, sub=True), {0})  # an output to replace
        old = {p.name: p.read_bytes() for p in (out.iterdir() if out.is_dir() else [out] if out.exists() else [])}
        env = kill_env(box.root / "site", {"folder-replace": "folder", "file-replace": "file"}.get(point, point))
        box.freeze(out_dir)
        command = ["denoise", src, "-o", out, "--method", "passthrough", "-q"] + (["--overwrite"] if old else [])
        code, _, err = run(*command, env=env)
        if code != -signal.SIGKILL:
            return found + [f"the kill point {point} was never reached (exit {code}): {err.strip()[-200:]}"]
        survivors = {p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
        if old and not set(old.values()) <= survivors:
            found.append("after the kill neither the old output nor a copy of it survives")
        found += expect(run(*command, sub=True), {0})  # the same command again
        found += box.problems()
        if sorted(os.listdir(out_dir)) != [out.name]:
            found.append(f"after the re-run the output folder holds {sorted(os.listdir(out_dir))}")
        return found
    return fn


for _point, _series in (("file", False), ("file-replace", False), ("folder", True), ("folder-replace", True),
                        ("aside", True), ("delete-old", True)):
    case("kill", f"SIGKILL at {_point} ({'series' if _series else 'photo'})")(_kill_case(_point, _series))


def _random_batch_kills(count: int):
    def fn(box: Sandbox, seeds: Seeds) -> list[str]:
        for i in range(16):
            shutil.copy(seeds.photos[i % len(seeds.photos)], box.inputs / f"photo {i:02d}.png")
        seeds.copy_series(box.inputs / "series1")
        out = box.root / "out"
        box.freeze(out)
        command = [*CLI, "batch", str(box.inputs), "-o", str(out), "--method", "passthrough", "-q"]
        rng, found = random.Random(11), []
        for _ in range(count):
            before = set(out.rglob("*")) if out.exists() else set()
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline and not (
                    set(out.rglob("*")) if out.exists() else set()) - before:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            found += [f"after a kill: {p}" for p in whole(out)] if out.exists() else []
        found += expect(run("batch", box.inputs, "-o", out, "--method", "passthrough", "-q", sub=True), {0})
        rep = json.loads((out / batch.REPORT_NAME).read_text())
        if rep["counts"]["done"] + rep["counts"]["skipped"] != 17:
            found.append(f"after the kills and a re-run: {rep['counts']}")
        return found + box.problems()
    return fn


# -- 3. batch cleaning: only our names, only in the output tree -----------------------------------

def _batch_around_input(extra: list[str]):
    def fn(box: Sandbox, seeds: Seeds) -> list[str]:
        src = box.inputs
        (src / "sub").mkdir()
        shutil.copy(seeds.photo, src / "a.png")
        shutil.copy(seeds.photo, src / "sub" / "b.png")
        planted = {src / ".a-0123abcd-part", src / "sub" / ".b-89abcdef-part.png", src / ".x.png.quietlens-0123abcd.part.png",
                   src / ".series.quietlens-0123abcd.old", box.root / ".notes-01234567-part.txt"}
        for p in planted:
            p.write_bytes(b"the user's")
        ours = box.root / ".a.png.quietlens-fedcba98.part.png"  # a killed batch's leftover in the output tree
        ours.write_bytes(b"half")
        box.freeze(box.root / "a.png", box.root / "sub" / "b.png", box.root / batch.REPORT_NAME,
                   box.root / batch.LOCK_NAME, ours)
        found = expect(run("batch", src, "-o", box.root, "--method", "passthrough", "-q", *extra,
                           sub=bool(extra)), {0})
        if ours.exists():
            found.append("the batch's own leftover in the output tree was not cleaned")
        return found + box.problems(planted={p.name for p in planted})
    return fn


case("batch cleaning", "output folder around the input (in process)")(_batch_around_input([]))
case("batch cleaning", "output folder around the input (helper process, --timeout)")(_batch_around_input(["--timeout", "60"]))


@case("batch cleaning", "a mirror that would land in the input fails, the input stays")
def _mirror_into_input(box: Sandbox, seeds: Seeds) -> list[str]:
    (box.inputs / "in").mkdir()
    shutil.copy(seeds.photo, box.inputs / "in" / "x.png")
    box.freeze(box.root / batch.REPORT_NAME, box.root / batch.LOCK_NAME)
    found = expect(run("batch", box.inputs, "-o", box.root, "--method", "passthrough", "-q"), {1})
    return found + box.problems()


@case("batch cleaning", "output inside the input is refused")
def _out_inside_in(box: Sandbox, seeds: Seeds) -> list[str]:
    shutil.copy(seeds.photo, box.inputs / "a.png")
    box.freeze()
    return expect(run("batch", box.inputs, "-o", box.inputs / "out", "--method", "passthrough", "-q"), {2}) \
        + box.problems()


# -- 5 to 8. inputs processed whole or refused -----------------------------------------------------

def _refused_input(make: Callable[[Sandbox, Seeds], Path], must_say: str, output: str = "out.png",
                   loads: bool = False, info_loads: bool = False):
    def fn(box: Sandbox, seeds: Seeds) -> list[str]:
        src = make(box, seeds)
        out = box.root / output
        box.freeze(out)
        found = []
        t0 = time.monotonic()
        code, stdout, err = run("info", src)
        found += expect((code, stdout, err), {0} if loads or info_loads else {1}, "" if loads or info_loads else must_say)
        found += expect(run("denoise", src, "-o", out, "--method", "passthrough", "-q"), {0} if loads else {2},
                        "" if loads else must_say)
        if time.monotonic() - t0 > 20:
            found.append(f"took {time.monotonic() - t0:.0f} s")
        if not loads and out.exists():
            found.append("a refused input still produced an output")
        return found + box.problems()
    return fn


def _tiff_pages(box, seeds, thumb=False):
    import tifffile

    with tifffile.TiffWriter(box.inputs / "x.tif") as tif:
        tif.write(seeds.pixels, photometric="rgb")
        if thumb:
            tif.write(seeds.pixels[::4, ::4], photometric="rgb", subfiletype=1)
        else:
            tif.write(seeds.pixels[::-1], photometric="rgb")
    return box.inputs / "x.tif"


def _animated(fmt: str):
    def make(box, seeds):
        from PIL import Image as PILImage

        frames = [PILImage.fromarray(seeds.pixels), PILImage.fromarray(seeds.pixels[::-1])]
        path = box.inputs / f"x.{fmt}"
        frames[0].save(path, save_all=True, append_images=frames[1:], **({"lossless": True} if fmt == "webp" else {}))
        return path
    return make


def _series_damage(where: int, how: str):
    def make(box, seeds):
        folder = seeds.copy_series(box.inputs / "series")
        victim = sorted(folder.iterdir())[where]
        if how == "empty":
            victim.write_bytes(b"")
        elif how == "garbage":
            victim.write_bytes(b"PACS export log\n" * 100)
        elif how == "cut":
            victim.write_bytes(victim.read_bytes()[:3000])
        return folder
    return make


def _missing_slice(box, seeds):
    folder = seeds.copy_series(box.inputs / "series")
    sorted(folder.iterdir())[17].unlink()
    return folder


def _nifti_claiming(shape, dtype, gz: bool):
    def make(box, seeds):
        import nibabel as nib

        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        header.set_data_dtype(dtype)
        header["vox_offset"] = 352
        data = header.binaryblock + b"\0" * 4 + seeds.photo.read_bytes()[:8000]
        path = box.inputs / ("claims.nii.gz" if gz else "claims.nii")
        path.write_bytes(gzip.compress(data) if gz else data)
        return path
    return make


def _nifti_of(transform: Callable[[np.ndarray], np.ndarray], suffix: str = ".nii"):
    def make(box, seeds):
        import nibabel as nib

        volume = io.load(seeds.series).data.transpose(2, 1, 0)
        path = box.inputs / f"x{suffix}"
        nib.save(nib.Nifti1Image(transform(volume), np.eye(4)), path)
        return path
    return make


def _dicom_claiming(rows: int, frames: int | None = None):
    def make(box, seeds):
        import pydicom

        ds = pydicom.dcmread(seeds.ct)
        ds.Rows = ds.Columns = rows
        if frames:
            ds.NumberOfFrames = frames
        ds.save_as(box.inputs / "claims.dcm")
        return box.inputs / "claims.dcm"
    return make


for _name, _make, _say in (
    ("a multi-page TIFF", _tiff_pages, "2 pages"),
    ("an animated PNG", _animated("png"), "2 frames"),
    ("an animated WebP", _animated("webp"), "2 frames"),
    ("NIfTI declaring 30000² float64 in 8 KB", _nifti_claiming((30000, 30000), np.float64, False), "declares"),
    ("gzipped NIfTI declaring 30000² float64", _nifti_claiming((30000, 30000), np.float64, True), "declares"),
    ("NIfTI declaring 2000×2000×200 int16", _nifti_claiming((2000, 2000, 200), np.int16, False), "declares"),
    ("NIfTI with a zero-length dimension", _nifti_of(lambda v: v[:, :0]), "zero-length"),
    ("NIfTI with a zero-length time axis", _nifti_of(lambda v: v[..., None][..., :0]), "zero-length"),
    ("complex64 NIfTI", _nifti_of(lambda v: v.astype(np.complex64)), "complex"),
    ("complex128 NIfTI, gzipped", _nifti_of(lambda v: v.astype(np.complex128), ".nii.gz"), "complex"),
    ("DICOM declaring 20000² pixels in 40 KB", _dicom_claiming(20000), "declares"),
    ("DICOM declaring 1000 frames of 4000²", _dicom_claiming(4000, 1000), "declares"),
):
    case("whole or refused", f"refused: {_name}")(_refused_input(_make, _say))

for _where, _label in ((0, "first"), (19, "middle"), (39, "last")):
    for _how in ("empty", "garbage", "cut"):
        case("whole or refused", f"refused naming it: series with a {_how} {_label} slice")(_refused_input(
            _series_damage(_where, _how), sorted(os.listdir(SHARED / "mr_series" / "toshiba_b0"))[_where],
            output="out"))

case("whole or refused", "loaded: a TIFF with a thumbnail page")(_refused_input(
    lambda box, seeds: _tiff_pages(box, seeds, thumb=True), "", loads=True))
case("whole or refused", "series with a missing slice: DICOM out keeps positions")(_refused_input(
    _missing_slice, "", output="out", loads=True))
case("whole or refused", "refused: series with a missing slice to NIfTI")(_refused_input(
    _missing_slice, "unevenly spaced", output="out.nii.gz", info_loads=True))
case("whole or refused", "refused: a photo over the byte budget")(
    lambda box, seeds: _with_env({"QUIETLENS_MAX_BYTES": "10000"},
                                 _refused_input(lambda b, s: Path(shutil.copy(s.photo, b.inputs / "p.png")),
                                                "QUIETLENS_MAX_BYTES"))(box, seeds))


def _with_env(env: dict, fn):
    def wrapped(box, seeds):
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return fn(box, seeds)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return wrapped


# -- 9. batch failures are reported, never skipped -------------------------------------------------

def _batch_with(make: Callable[[Sandbox, Seeds], None], code: int, failed: set[str], needs_user: bool = False):
    def fn(box: Sandbox, seeds: Seeds) -> list[str]:
        shutil.copy(seeds.photo, box.inputs / "a.png")
        undo = make(box, seeds)
        out = box.root / "out"
        prefix = ordinary_user() if needs_user else []
        if prefix is None:
            return ["skipped: permissions cannot be enforced here"]
        box.freeze(out)
        try:
            result = run("batch", box.inputs, "-o", out, "--method", "passthrough", "-q", prefix=prefix or None,
                         sub=bool(prefix))
        finally:
            if callable(undo):
                undo()
        found = expect(result, {code})
        report = out / batch.REPORT_NAME
        files = {Path(f["input"]).name: f for f in json.loads(report.read_text())["files"]} if report.exists() else {}
        for name in failed:
            if files.get(name, {}).get("status") != "failed":
                found.append(f"{name} is not reported as failed: {files.get(name)}")
        return found + box.problems()
    return fn


def _locked_folder(box, seeds):
    (box.inputs / "locked").mkdir()
    shutil.copy(seeds.photo, box.inputs / "locked" / "b.png")
    (box.inputs / "locked").chmod(0)
    return lambda: (box.inputs / "locked").chmod(0o755)


def _locked_file(box, seeds):
    shutil.copy(seeds.photo, box.inputs / "locked.png")
    (box.inputs / "locked.png").chmod(0)
    return lambda: (box.inputs / "locked.png").chmod(0o644)


def _links(box, seeds):
    os.symlink("loop.png", box.inputs / "loop.png")
    os.symlink("nowhere.png", box.inputs / "dangling.png")
    os.symlink(".", box.inputs / "again")


case("batch failures", "an unreadable folder")(_batch_with(_locked_folder, 1, {"locked"}, needs_user=True))
case("batch failures", "an unreadable file")(_batch_with(_locked_file, 1, {"locked.png"}, needs_user=True))
case("batch failures", "symlink loops and dangling links")(_batch_with(_links, 1, {"loop.png", "dangling.png"}))
case("batch failures", "a series with an empty slice")(_batch_with(
    lambda box, seeds: _series_damage(20, "empty")(box, seeds) and None, 1, {"series"}))


# -- 10 and 12. clean errors for impossible requests ------------------------------------------------

def _bad_request(argv: Callable[[Sandbox, Seeds], list], must_say: str = "", codes: frozenset = frozenset({2})):
    def fn(box: Sandbox, seeds: Seeds) -> list[str]:
        args = argv(box, seeds)
        box.freeze()
        return expect(run(*args), set(codes), must_say) + box.problems()
    return fn


def _photo_args(*extra):
    def argv(box, seeds):
        shutil.copy(seeds.photo, box.inputs / "p.png")
        mask = box.root / "mask.png"
        if not mask.exists():
            from PIL import Image as PILImage

            PILImage.fromarray(np.full((96, 96), 255, np.uint8)).save(mask)
        return ["denoise", box.inputs / "p.png", "-o", box.root / "out.png", "--method", "passthrough", "-q",
                *[str(a).replace("MASK", str(mask)) for a in extra]]
    return argv


for _region, _say in (("nosuch=0.5", "strength in [0, 1]"), ("strength=2", "must be in [0, 1]"),
                      ("strength=-0.1", "must be in [0, 1]"), ("strength=nan", "must be in [0, 1]"),
                      ("strength=inf", "must be in [0, 1]"), ("strength=half", "needs a number"),
                      ("strength", "NAME=VALUE"), ("=1", "NAME=VALUE")):
    case("clean errors", f"--region {_region}")(_bad_request(_photo_args("--mask", "MASK", "--region", _region), _say))
case("clean errors", "--region without --mask")(_bad_request(_photo_args("--region", "strength=0.5"), "mask"))
for _param, _say in (("strength=7", "must be a value in"), ("nosuch=1", "has no parameter"), ("strength=x", "needs a number")):
    case("clean errors", f"--param {_param}")(_bad_request(_photo_args("--param", _param), _say))
case("clean errors", "--threads 0")(_bad_request(_photo_args("--threads", "0"), "positive integer"))
for _workers in ("0", "-2", "many"):
    case("clean errors", f"batch --workers {_workers}")(_bad_request(
        lambda box, seeds, w=_workers: ["batch", box.inputs, "-o", box.root / "out", "--method", "passthrough",
                                        "--workers", w], "positive integer"))
for _timeout in ("0", "-5", "nan"):
    case("clean errors", f"batch --timeout {_timeout}")(_bad_request(
        lambda box, seeds, t=_timeout: ["batch", box.inputs, "-o", box.root / "out", "--method", "passthrough",
                                        "--timeout", t], "timeout"))
case("clean errors", "an input that does not exist")(_bad_request(
    lambda box, seeds: ["denoise", box.inputs / "nope.png", "-o", box.root / "o.png", "--method", "passthrough", "-q"],
    "no such file"))
case("clean errors", "a symlink loop as input")(_bad_request(
    lambda box, seeds: os.symlink("l.png", box.inputs / "l.png") or
    ["denoise", box.inputs / "l.png", "-o", box.root / "o.png", "--method", "passthrough", "-q"], "link loop"))
case("clean errors", "denoise into a missing folder")(_bad_request(
    lambda box, seeds: _photo_args()(box, seeds)[:3] + [box.root / "no" / "where.png", "--method", "passthrough", "-q"],
    "does not exist"))
case("clean errors", "info on a folder without images")(_bad_request(
    lambda box, seeds: ["info", box.inputs], "", codes=frozenset({0})))


@case("clean errors", "batch into a read-only folder needing a subfolder")
def _read_only_destination(box: Sandbox, seeds: Seeds) -> list[str]:
    prefix = ordinary_user()
    if prefix is None:
        return ["skipped: permissions cannot be enforced here"]
    shutil.copy(seeds.photo, box.inputs / "a.png")
    locked = box.root / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    box.freeze()
    try:
        result = run("batch", box.inputs, "-o", locked / "new" / "sub", "--method", "passthrough", "-q",
                     prefix=prefix or None, sub=True)
    finally:
        locked.chmod(0o755)
    return expect(result, {2}, "cannot be created") + box.problems()


@case("clean errors", "info --json into a closed pipe")
def _closed_pipe(box: Sandbox, seeds: Seeds) -> list[str]:
    for i in range(30):
        shutil.copy(seeds.photo, box.inputs / f"p{i}.png")
    box.freeze()
    proc = subprocess.Popen([*CLI, "info", "--json", str(box.inputs)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    code = proc.wait(timeout=120)
    found = [] if code == 1 and not err.strip() else [f"exit {code}, stderr {err.strip()[-300:]!r}"]
    return found + box.problems()


def _interrupted_batch(sig: signal.Signals):
    def fn(box: Sandbox, seeds: Seeds) -> list[str]:
        for i in range(30):
            shutil.copy(seeds.photos[i % len(seeds.photos)], box.inputs / f"p{i:02d}.png")
        out = box.root / "out"
        box.freeze(out)
        code, err = interrupt_batch(box.inputs, out, sig)
        found = [] if code == 130 else [f"exit {code}"]
        report = out / batch.REPORT_NAME
        if not report.exists():
            return found + ["no report"]
        counts = json.loads(report.read_text())["counts"]
        said = f"{counts['done']} outputs were written and kept, {counts['cancelled']} inputs were not started"
        if said not in err or "Traceback" in err:
            found.append(f"stderr does not say what was kept: {err.strip()[-300:]!r}")
        return found + box.problems()
    return fn


case("clean errors", "Ctrl-C on a batch")(_interrupted_batch(signal.SIGINT))
case("clean errors", "SIGTERM on a batch")(_interrupted_batch(signal.SIGTERM))


# -- running them ------------------------------------------------------------------------------------

def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12, help="random SIGKILLs of a batch before it is resumed")
    parser.add_argument("--only", nargs="*", help="groups to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the sandboxes of failed cases")
    args = parser.parse_args(argv)
    case("kill", f"{args.kills} random SIGKILLs of a batch, then the same command")(_random_batch_kills(args.kills))

    root = Path(tempfile.mkdtemp(prefix="quietlens-abuse-"))
    seeds = Seeds(root / "seeds")
    results: list[tuple[str, str, list[str], float]] = []
    t_start = time.monotonic()
    for k, (group, name, fn) in enumerate(CASES):
        if args.only and group not in args.only:
            continue
        sandbox = root / f"case{k:03d}"
        sandbox.mkdir()
        t0 = time.monotonic()
        try:
            problems = fn(Sandbox(sandbox), seeds)
        except Exception:  # noqa: BLE001 - a broken case is a failure, not the end of the run
            problems = ["the case itself failed: " + traceback.format_exc().strip().splitlines()[-1]]
        results.append((group, name, problems, time.monotonic() - t0))
        mark = "ok  " if not problems else ("skip" if problems[0].startswith("skipped") else "FAIL")
        print(f"{mark} {group:<17} {name} ({time.monotonic() - t0:.1f} s)", flush=True)
        if not problems or not args.keep:
            shutil.rmtree(sandbox, ignore_errors=True)

    print(f"\n{'group':<18} {'cases':>5} {'failures':>8} {'skipped':>7}")
    groups = list(dict.fromkeys(r[0] for r in results))
    skipped = lambda r: r[2] and r[2][0].startswith("skipped")  # noqa: E731
    for group in groups:
        rows = [r for r in results if r[0] == group]
        print(f"{group:<18} {len(rows):>5} {sum(bool(r[2]) and not skipped(r) for r in rows):>8} "
              f"{sum(bool(skipped(r)) for r in rows):>7}")
    failures = [r for r in results if r[2] and not skipped(r)]
    print(f"{'total':<18} {len(results):>5} {len(failures):>8} {sum(bool(skipped(r)) for r in results):>7}"
          f"   ({time.monotonic() - t_start:.0f} s)")
    for group, name, problems, _ in failures:
        print(f"\nFAIL {group}: {name}")
        for p in problems:
            print(f"  - {p}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main_())
