"""Shared fixtures: where the real development captures live, and small real files from packages."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    env = os.environ.get("QUIETLENS_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


NO_SHARED_DATA = "real development captures not found at"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: real RAW files, real noisy/clean sRGB pairs, a real MR DICOM series."""
    root = _shared_data()
    if not root.is_dir():
        pytest.skip(f"{NO_SHARED_DATA} {root} (set QUIETLENS_SHARED_DATA)")
    return root


@pytest.hookimpl(wrapper=True, tryfirst=True)  # after the list of skipped tests, so it is not buried
def pytest_terminal_summary(terminalreporter):
    """One line saying how many tests skipped for want of ../shared/data, and how to run them."""
    result = yield
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if isinstance(r.longrepr, tuple) and NO_SHARED_DATA in str(r.longrepr[-1])]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} real-data tests skipped: {NO_SHARED_DATA} {_shared_data()} (put the shared data "
            "folder beside the checkout as ../shared/data, or set QUIETLENS_SHARED_DATA)", yellow=True, bold=True)
    return result


@pytest.fixture(scope="session")
def raw_files(shared_data: Path) -> list[Path]:
    files = sorted(p for p in (shared_data / "raw").iterdir() if p.is_file())
    assert files, "no RAW files in shared data"
    return files


@pytest.fixture(scope="session")
def mr_series_dir(shared_data: Path) -> Path:
    return shared_data / "mr_series" / "toshiba_b0"


@pytest.fixture(scope="session")
def srgb_pairs(shared_data: Path) -> list[tuple[Path, Path]]:
    """(noisy, clean) PNG pairs from SIDD and a Canon 5D Mark III set."""
    pairs = []
    for noisy in sorted((shared_data / "srgb_pairs").rglob("*_noisy.png")):
        pairs.append((noisy, noisy.with_name(noisy.name.replace("_noisy", "_clean"))))
    return pairs


@pytest.fixture(scope="session")
def pydicom_ct() -> Path:
    """pydicom's own small real CT slice (128², signed 16-bit, rescale intercept −1024)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="session")
def as_ordinary_user() -> list[str]:
    """A command prefix under which folder permissions apply even for root (CI runs as root).

    Root bypasses permission bits through CAP_DAC_OVERRIDE; ``setpriv`` drops it from the bounding set so
    the child process is refused like any user would be.
    """
    import shutil

    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: read-only folders cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """An empty folder nobody may write into (skipped where permissions are not enforced, e.g. root).

    Root's refusal is covered end to end by the CLI batch test, which runs under ``as_ordinary_user``.
    """
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("folder permissions are not enforced for this user (root)")
        yield folder
    finally:
        folder.chmod(0o755)


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread for the test (tiny networks: threads only add overhead on a shared CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
