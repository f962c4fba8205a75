"""Set-up as a newcomer meets it: the app explains what stops its window, the test summary what it skipped."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quietlens.app import startup

HERE = Path(__file__).resolve().parent


def test_skipped_real_data_tests_are_counted_in_one_line(tmp_path):
    """Without ../shared/data the summary names how many tests it cost and where the data belongs."""
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_needs_data.py").write_text(
        "def test_a(shared_data):\n    pass\n\ndef test_b(raw_files):\n    pass\n\ndef test_c():\n    pass\n")
    env = {**os.environ, "QUIETLENS_SHARED_DATA": str(tmp_path / "absent")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in run.stdout.splitlines() if "real-data tests skipped" in line]
    assert len(lines) == 1, run.stdout
    assert lines[0].startswith("2 real-data tests skipped") and "../shared/data" in lines[0]
    assert str(tmp_path / "absent") in lines[0]
    assert run.stdout.splitlines()[-1].startswith("1 passed, 2 skipped")  # right above the totals


def test_debian_package_names_follow_the_sonames():
    assert startup.debian_package("libxcb-icccm.so.4") == "libxcb-icccm4"
    assert startup.debian_package("libxcb-keysyms.so.1") == "libxcb-keysyms1"
    assert startup.debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert startup.debian_package("libX11-xcb.so.1") == "libx11-xcb1"


def _apt_candidate(package: str) -> str | None:
    """The version apt would install; "(none)" or None when it has none (or cannot be asked)."""
    if shutil.which("apt-cache") is None:
        return None
    found = re.search(r"Candidate: (\S+)", subprocess.run(["apt-cache", "policy", package],
                                                          capture_output=True, text=True).stdout)
    return found.group(1) if found else None


def test_missing_platform_libraries_agree_with_the_dynamic_linker():
    plugin = startup.xcb_plugin()
    if plugin is None:
        pytest.skip("this Qt has no X11 platform plugin")
    missing = startup.missing_libraries(plugin)
    load = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(plugin)!r})"],
                          capture_output=True, text=True)
    if load.returncode == 0:
        assert missing == []
    else:
        assert missing and any(name in load.stderr for name in missing), (missing, load.stderr)
    if missing and _apt_candidate("libc6") not in (None, "(none)"):  # apt has package lists to ask
        for name in missing:
            assert _apt_candidate(startup.debian_package(name)) not in (None, "(none)"), name


def test_gui_names_the_packages_instead_of_aborting(tmp_path):
    """Where the X11 plugin cannot load, quietlens-gui prints the apt-get line and exits cleanly; with
    no display at all it says so; offscreen it needs neither."""
    gui = Path(sys.executable).with_name("quietlens-gui")
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY", "DISPLAY")}
    plugin = startup.xcb_plugin()
    missing = startup.missing_libraries(plugin) if plugin else []
    run = subprocess.run([str(gui), str(tmp_path / "none.png")], env={**env, "DISPLAY": ":99"},
                         capture_output=True, text=True, timeout=120)
    if missing:
        assert run.returncode == 1 and "sudo apt-get install " in run.stderr
        line = [x for x in run.stderr.splitlines() if "apt-get install" in x][0]
        assert line.split("install ")[1].split() == list(dict.fromkeys(map(startup.debian_package, missing)))
    else:  # the plugin loads: what fails now is the display :99 nobody serves
        assert run.returncode != 0
    run = subprocess.run([str(gui)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "cannot open a window" in run.stderr
    assert startup.window_problem({**env, "QT_QPA_PLATFORM": "offscreen"}) is None
