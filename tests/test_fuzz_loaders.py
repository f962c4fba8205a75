"""Fuzzed inputs for every loader: mutated real files (PNG, JPEG, WebP, TIFF, DNG and another RAW, DICOM
in several encodings, NIfTI) and random bytes behind each format's magic. Every input either loads (and
then goes through the pipeline to a written output) or raises a QuietLensError: no other exception, no
hang, no allocation beyond the declared-size limit.

CI runs a short budget; ``QUIETLENS_FUZZ_EXAMPLES=500`` (per format) runs a longer, randomised campaign.
"""
from __future__ import annotations

import contextlib
import faulthandler
import io as bytes_io
import os
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from quietlens.engine import io, pipeline  # noqa: E402
from quietlens.engine.errors import QuietLensError  # noqa: E402

DEFAULT_EXAMPLES = 12
EXAMPLES = int(os.environ.get("QUIETLENS_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # hangs are caught by the alarm below; a slow shared CI machine is not a failure
    database=None,
    derandomize=EXAMPLES == DEFAULT_EXAMPLES,  # CI: the same inputs on every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HANG_SECONDS = 20
# Damaged files make pydicom and nibabel warn before they fail; the outcome is what is checked here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
MAX_PIXELS = 16_000_000  # above every seed; keeps a mutated header's legal-but-large claim affordable
# Two- and four-byte values that break parsers: zero, one, sign bits, all ones, "large".
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 100_000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


class Hang(BaseException):
    """Not an Exception, so that no loader's ``except Exception`` can turn it into a typed error."""


@contextlib.contextmanager
def no_hang(seconds: float):
    def alarm(*_):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds * 3, exit=True)  # a hang in C code never sees the alarm
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module", autouse=True)
def pixel_limit():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUIETLENS_MAX_PIXELS", str(MAX_PIXELS))
        yield


@pytest.fixture(scope="module")
def seeds(tmp_path_factory, srgb_pairs, raw_files, mr_series_dir) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, suffix): real files, or files made from real pixels by the usual libraries."""
    from pydicom.data import get_testdata_file

    work = tmp_path_factory.mktemp("seeds")
    photo = np.asarray(PILImage.open(srgb_pairs[0][0]).convert("RGB"))[:96, :96]
    out: dict[str, tuple[bytes, str]] = {"png": (srgb_pairs[0][0].read_bytes(), ".png")}
    out["png16-grey"] = (cv2.imencode(".png", photo[..., 0].astype(np.uint16) * 257)[1].tobytes(), ".png")
    for fmt, suffix in (("JPEG", ".jpg"), ("WEBP", ".webp")):
        buffer = bytes_io.BytesIO()
        PILImage.fromarray(photo).save(buffer, format=fmt, quality=90)
        out[fmt.lower()] = (buffer.getvalue(), suffix)
    buffer = bytes_io.BytesIO()
    tifffile.imwrite(buffer, photo.astype(np.uint16) * 257, photometric="rgb", compression="zlib", predictor=True)
    out["tiff"] = (buffer.getvalue(), ".tif")
    buffer = bytes_io.BytesIO()
    tifffile.imwrite(buffer, photo[..., 0].astype(np.float32) / 255, photometric="minisblack")
    out["tiff-float"] = (buffer.getvalue(), ".tif")
    kdc = next(p for p in raw_files if p.suffix == ".KDC")
    out["kdc"] = (kdc.read_bytes(), ".kdc")
    io.save(io.load(kdc), work / "kdc.dng")  # a DNG written the way QuietLens writes them
    out["dng"] = ((work / "kdc.dng").read_bytes(), ".dng")
    out["dng-camera"] = (next(p for p in raw_files if p.name == "colorchart.dng").read_bytes(), ".dng")
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "JPEG-LL.dcm",
                 "MR_small_bigendian.dcm", "emri_small.dcm"):
        out[f"dicom-{name[:-4]}"] = (Path(get_testdata_file(name)).read_bytes(), ".dcm")
    out["dicom-mr"] = ((mr_series_dir / "0001.dcm").read_bytes(), ".dcm")
    volume = io.load(mr_series_dir)
    for suffix in (".nii", ".nii.gz"):
        io.save(volume, work / f"mr{suffix}")
        out[f"nifti{suffix.replace('.nii', '')}"] = ((work / f"mr{suffix}").read_bytes(), suffix)
    return out


SEED_NAMES = ["png", "png16-grey", "jpeg", "webp", "tiff", "tiff-float", "kdc", "dng", "dng-camera",
              "dicom-CT_small", "dicom-MR_small_RLE", "dicom-MR_small_jp2klossless", "dicom-JPEG-LL",
              "dicom-MR_small_bigendian", "dicom-emri_small", "dicom-mr", "nifti", "nifti.gz"]


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """1-4 edits, half of them in the first KiB where the headers are."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        head = st.integers(0, min(len(out), 1024) - 1)
        pos = draw(st.one_of(head, st.integers(0, len(out) - 1)))
        kind = draw(st.sampled_from(["flip", "value", "truncate", "delete", "duplicate", "zeros"]))
        if kind == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "value":
            width, order = draw(st.sampled_from([2, 4])), draw(st.sampled_from(["little", "big"]))
            value = draw(st.sampled_from(INTERESTING)) & ((1 << 8 * width) - 1)
            out[pos:pos + width] = value.to_bytes(width, order)
        elif kind == "truncate":
            del out[pos:]
        else:
            size = draw(st.integers(1, 64))
            if kind == "delete":
                del out[pos:pos + size]
            elif kind == "duplicate":
                out[pos:pos] = out[pos:pos + size]
            else:
                out[pos:pos + size] = bytes(len(out[pos:pos + size]))
    return bytes(out)


def load_or_typed_error(folder: Path, data: bytes, suffix: str) -> None:
    """The property: a typed error, or an image that the pipeline writes (or refuses with a typed error)."""
    src = folder / f"input{suffix}"
    src.write_bytes(data)
    out = folder / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    with no_hang(HANG_SECONDS):
        try:
            image = io.load(src)
        except QuietLensError:
            return
        assert image.data.dtype == np.float32 and image.data.ndim == len(image.axes)
        assert image.data.size <= MAX_PIXELS * 3
        try:
            pipeline.denoise_file(src, io.formats.default_output_path(src, out, folder), "passthrough")
        except QuietLensError:
            pass
    assert not [p for p in out.rglob(".*") if io.PARTIAL_NAME.match(p.name)]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("name", SEED_NAMES)
def test_seeds_load(seeds, scratch, name):
    data, suffix = seeds[name]
    (scratch / f"seed{suffix}").write_bytes(data)
    assert io.load(scratch / f"seed{suffix}").data.size > 0


@pytest.mark.parametrize("name", SEED_NAMES)
@FUZZ
@given(choices=st.data())
def test_mutated_real_files(seeds, scratch, name, choices):
    data, suffix = seeds[name]
    load_or_typed_error(scratch, choices.draw(mutations(data), label="mutated"), suffix)


MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".tif": b"II*\x00", ".dng": b"MM\x00*",
         ".dcm": b"\x00" * 128 + b"DICM", ".nii": b"", ".nii.gz": b"\x1f\x8b", ".webp": b"RIFF\x00\x00\x00\x00WEBP",
         ".cr2": b"II*\x00"}


@FUZZ
@given(suffix=st.sampled_from(sorted(MAGIC)), body=st.binary(max_size=4096))
def test_random_bytes(scratch, suffix, body):
    load_or_typed_error(scratch, MAGIC[suffix] + body, suffix)


# -- what fuzzing found, kept as fixed cases

def test_rle_decoder_panic_is_a_corrupt_file(scratch):
    """pylibjpeg-rle panics (pyo3 PanicException, a BaseException) on an RLE segment that decodes past
    the frame; it used to escape io.load and end a whole batch."""
    import struct

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate

    from quietlens.engine.errors import CorruptFileError

    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    segment = bytes([0x81, 7]) * 40  # replicate runs: 5120 bytes where the frame holds 4096 per segment
    frame = struct.pack("<16I", 2, 64, 64 + len(segment), *[0] * 13) + segment + segment
    ds.PixelData = encapsulate([frame])
    ds.save_as(scratch / "panic.dcm")
    with pytest.raises(CorruptFileError, match="decoder failed"):
        io.load(scratch / "panic.dcm")
