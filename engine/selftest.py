"""The installation self-test behind ``quietlens --self-test`` and ``quietlens-gui --self-test``.

It checks what a user's install (or the desktop bundle) will run: the version metadata is there, every
model of the shipped manifest loads through :mod:`.runtime` (sha256 verified), each file family
round-trips, compressed DICOM decodes, and every user-facing method denoises a small synthetic image of
each kind it accepts through :func:`.pipeline.denoise` on the CPU: same shape out, all finite, and
closer to the known clean image than the noisy input. Inference-only methods run first, and torch
must still be absent afterwards: a fast start-up depends on it. Methods in ``TORCH_METHODS`` fit a
network to the image, which needs PyTorch, so they run last.

User-trained models are hidden for the duration (``QUIETLENS_DATA`` points to an empty folder), so a
retrained ``cbsn`` cannot mask a damaged shipped one.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from . import catalogue, pipeline, runtime
from .image import KINDS, Image
from .methods import Method, available

TORCH_METHODS = ("f2n",)  # fit a network per image with PyTorch; everything else is ONNX Runtime only
FIT_STEPS = 10  # enough to prove that fitting and its export work; the full fit is far longer
SEED = 20240601
# Round trips through io.save/io.load: the suffix, the sample it writes, and the mean absolute error
# allowed (8-bit quantisation; JPEG and WebP are lossy; the DNG stores 16-bit sensor values).
FORMATS = ((".png", "photo", 0.5 / 255), (".tif", "photo", 0.5 / 255), (".jpg", "photo", 0.05),
           (".webp", "photo", 0.05), (".dng", "raw", 1e-4), (".nii.gz", "mr", 1e-3))


@dataclass
class Check:
    name: str
    ok: bool
    seconds: float
    detail: str = ""

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name:<22} {self.seconds:6.2f} s  {self.detail}"


@dataclass
class Sample:
    """A synthetic test input: the noisy image and the clean image it was made from."""

    noisy: Image
    clean: np.ndarray


# -- built-in inputs ---------------------------------------------------------------------------------

def _scene(h: int, w: int, phase: float = 0.0) -> np.ndarray:
    """A smooth clean image in [0.1, 0.9]: a tilted ramp, a wave and two soft-edged discs."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    out = 0.3 + 0.25 * xx + 0.15 * yy + 0.06 * np.sin(6.0 * xx + 4.0 * yy + phase)
    for cy, cx, r, v in ((0.35, 0.3, 0.18, 0.3), (0.65, 0.7, 0.22, -0.2)):
        d = np.hypot(yy - cy, xx - cx)
        out += v / (1.0 + np.exp((d - r) * 40.0))  # edge a few pixels wide
    return np.clip(out, 0.1, 0.9).astype(np.float32)


def sample(kind: str) -> Sample:
    """The built-in noisy/clean pair for an image kind (deterministic)."""
    rng = np.random.default_rng(SEED)
    if kind == "photo":
        clean = np.stack([_scene(96, 96, p) for p in (0.0, 1.0, 2.0)], axis=-1)
        noisy = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1)
        return Sample(Image(noisy.astype(np.float32), "photo", "HWC", "png"), clean)
    if kind == "raw":
        # Normalised Bayer mosaic with Poisson–Gaussian noise, as the raw loader delivers it.
        clean = _scene(128, 128) * 0.6
        gain, read = 2e-3, 3e-3
        noisy = gain * rng.poisson(clean / gain) + rng.normal(0, read, clean.shape)
        meta = {"cfa_pattern": "RGGB", "raw_pattern": [[0, 1], [3, 2]], "white_level": 16383,
                "black_level_per_channel": [512.0] * 4}
        return Sample(Image(noisy.astype(np.float32), "raw", "HW", "raw", meta=meta), clean)
    if kind == "ct":
        # HU: air around a water-like body with a bone and a fat insert.
        yy, xx = np.mgrid[0:64, 0:64] / 64.0
        clean = np.where(np.hypot(yy - 0.5, xx - 0.5) < 0.42, 40.0, -1000.0)
        clean = np.where(np.hypot(yy - 0.4, xx - 0.4) < 0.1, 700.0, clean)
        clean = np.where(np.hypot(yy - 0.62, xx - 0.6) < 0.12, -100.0, clean).astype(np.float32)
        noisy = clean + rng.normal(0, 30.0, clean.shape)
        return Sample(Image(noisy.astype(np.float32), "ct", "HW", "dicom", spacing=(0.8, 0.8)), clean)
    if kind in ("mr", "medical"):
        # MR: a small volume; other modalities (e.g. an X-ray): one slice. Scanner units.
        clean = np.stack([_scene(64, 64, z) for z in (0.0, 0.3, 0.6, 0.9)]) * 1000.0
        clean = clean if kind == "mr" else clean[0]
        noisy = clean + rng.normal(0, 30.0, clean.shape)
        axes = "ZHW" if kind == "mr" else "HW"
        return Sample(Image(noisy.astype(np.float32), kind, axes, "dicom"), clean)
    raise ValueError(f"no built-in sample for kind {kind!r}")


# -- checks ------------------------------------------------------------------------------------------

def timed(name: str, fn: Callable[[], str]) -> Check:
    t0 = time.perf_counter()
    try:
        detail, ok = fn(), True
    except Exception as exc:  # a self-test reports every failure and goes on
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return Check(name, ok, time.perf_counter() - t0, detail)


def check_version() -> Check:
    """``__version__`` comes from the installed distribution's metadata (a bundle must carry it)."""
    def run() -> str:
        from . import __version__

        if __version__ == "0.0.0":
            raise AssertionError("the quietlens distribution metadata is missing: version unknown")
        return __version__

    return timed("version", run)


def check_model(model_id: str) -> Check:
    def load() -> str:
        sess = runtime.session(model_id, "cpu")  # verifies the file's sha256 against the manifest
        return f"sha256 ok, inputs {', '.join(sess.input_names)}"

    return timed(f"model {model_id}", load)


def _quick(method: Method, kind: str) -> Method:
    """Filter2Noise with a short fit (its own per-kind settings otherwise)."""
    if method.name != "f2n":
        return method
    from quietlens.models.f2n import FitConfig

    from .methods.f2n import CT_DETAIL

    return type(method)(FitConfig(iterations=FIT_STEPS, min_iterations=FIT_STEPS,
                                  **({"detail": CT_DETAIL} if kind == "ct" else {})))


def check_method(method: Method, kind: str) -> Check:
    """Denoise the built-in ``kind`` sample; it must come back same-shaped, finite and less noisy."""
    def run() -> str:
        s = sample(kind)
        out = pipeline.denoise(s.noisy, _quick(method, kind), provider="cpu").image.data
        if out.shape != s.noisy.data.shape:
            raise AssertionError(f"output shape {out.shape} != input shape {s.noisy.data.shape}")
        if not np.isfinite(out).all():
            raise AssertionError("the output has NaN or infinite values")
        before = float(np.mean((s.noisy.data - s.clean) ** 2))
        after = float(np.mean((out - s.clean) ** 2))
        if not after < before:
            raise AssertionError(f"not denoised: MSE {before:.4g} -> {after:.4g}")
        return f"MSE {before:.4g} -> {after:.4g} ({10 * np.log10(before / after):+.1f} dB)"

    return timed(f"{method.name} on {kind}", run)


def check_registry(methods: list[Method]) -> Check:
    """Every image kind has a denoiser: also proves the method modules were found (frozen builds
    discover them with ``pkgutil``, which fails silently when they were not collected)."""
    def run() -> str:
        missing = [k for k in KINDS if not any(k in m.kinds for m in methods)]
        if missing:
            raise AssertionError(f"no method for {', '.join(missing)} images "
                                 f"(found: {', '.join(m.name for m in methods) or 'none'})")
        return ", ".join(m.name for m in methods)

    return timed("methods", run)


def check_file_formats() -> Check:
    """Each file family writes and reads back (OpenCV, Pillow, tifffile, LibRaw via rawpy, nibabel)."""
    def run() -> str:
        from . import io

        with tempfile.TemporaryDirectory(prefix="quietlens-selftest-") as tmp:
            for suffix, kind, tolerance in FORMATS:
                image = sample(kind).noisy
                if suffix == ".nii.gz":  # a NIfTI source's header and affine, as the loader keeps them
                    import nibabel as nib

                    header = nib.Nifti1Header()
                    header.set_data_dtype(np.float32)
                    image = image.with_data(image.data, fmt="nifti", meta={"header": header, "affine": np.eye(4)})
                back = io.load(io.save(image, os.path.join(tmp, f"sample{suffix}")))
                if back.kind != kind or back.data.shape != image.data.shape:
                    raise AssertionError(f"{suffix} came back as {back.kind} {back.data.shape}")
                error = float(np.abs(back.data - image.data).mean())
                if error > tolerance:
                    raise AssertionError(f"{suffix} came back off by {error:.3g}")
        return " ".join(suffix for suffix, _, _ in FORMATS)

    return timed("file formats", run)


def check_dicom_codecs() -> Check:
    """Compressed DICOM round-trips through the loader. pydicom finds the pylibjpeg codecs by their
    package metadata (entry points), which a frozen build has only when it collected it."""
    def run() -> str:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
        from pylibjpeg.utils import get_pixel_data_decoders

        from . import io

        wanted = {"1.2.840.10008.1.2.4.50": "JPEG", "1.2.840.10008.1.2.4.70": "JPEG lossless",
                  "1.2.840.10008.1.2.4.80": "JPEG-LS", "1.2.840.10008.1.2.4.90": "JPEG 2000",
                  "1.2.840.10008.1.2.5": "RLE"}
        missing = [name for uid, name in wanted.items() if uid not in get_pixel_data_decoders()]
        if missing:
            raise AssertionError(f"no pylibjpeg decoder for {', '.join(missing)}")
        pixels = (np.add.outer(np.arange(32), np.arange(32)) * 37 % 4000).astype(np.uint16)
        with tempfile.TemporaryDirectory(prefix="quietlens-selftest-") as tmp:
            for syntax in (JPEG2000Lossless, RLELossless):
                ds = Dataset()
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, generate_uid(), "CT"
                ds.Rows, ds.Columns = pixels.shape
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
                ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
                ds.compress(syntax, pixels, encoding_plugin="pylibjpeg")
                path = os.path.join(tmp, "slice.dcm")
                ds.save_as(path, enforce_file_format=True)
                if not np.array_equal(io.load(path).data, pixels - np.float32(1024)):
                    raise AssertionError(f"{syntax.name} did not decode to the pixels written")
        return f"decoders for {', '.join(wanted.values())}; JPEG 2000 and RLE round trips exact"

    return timed("dicom codecs", run)


@contextlib.contextmanager
def _shipped_models_only() -> Iterator[None]:
    old = os.environ.get("QUIETLENS_DATA")
    with tempfile.TemporaryDirectory(prefix="quietlens-selftest-") as empty:
        os.environ["QUIETLENS_DATA"] = empty
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("QUIETLENS_DATA", None)
            else:
                os.environ["QUIETLENS_DATA"] = old


def run_self_test(progress: Callable[[Check], None] | None = None) -> list[Check]:
    """Run every check (``progress`` gets each one as it finishes) and return them all."""
    checks: list[Check] = []

    def record(check: Check) -> None:
        checks.append(check)
        if progress is not None:
            progress(check)

    torch_before = "torch" in sys.modules
    record(check_version())
    with _shipped_models_only():
        for model_id in catalogue.load(catalogue.packaged_manifest_path()):
            record(check_model(model_id))
        record(check_file_formats())
        record(check_dicom_codecs())
        methods = available()
        record(check_registry(methods))
        ordered = sorted(methods, key=lambda m: m.name in TORCH_METHODS)  # stable: registry order otherwise
        inference = [m for m in ordered if m.name not in TORCH_METHODS]
        for m in inference:
            for kind in m.kinds:
                record(check_method(m, kind))
        if torch_before:
            record(Check("no torch at inference", True, 0.0, "not measurable: torch was imported before"))
        else:
            leaked = "torch" in sys.modules
            record(Check("no torch at inference", not leaked, 0.0,
                         "torch got imported by the inference-only checks above" if leaked
                         else f"{', '.join(m.name for m in inference)} ran without torch"))
        for m in ordered[len(inference):]:
            for kind in m.kinds:
                record(check_method(m, kind))
    return checks


def main() -> int:
    """Print one line per check and a summary; 0 when everything passed."""
    from . import __version__

    print(f"QuietLens {__version__} self-test (CPU, ONNX Runtime {runtime.describe()['onnxruntime']})", flush=True)
    t0 = time.perf_counter()
    checks = run_self_test(lambda c: print(c.line(), flush=True))
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed ({time.perf_counter() - t0:.1f} s)", flush=True)
    return 1 if failed else 0
