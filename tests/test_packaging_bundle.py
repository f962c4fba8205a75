"""The desktop bundle's inputs: one version number, a valid desktop entry, icons, and a spec that names
the programs the entry launches. (The bundle itself is built and smoke-tested by `make package`.)"""
from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DESKTOP = REPO / "packaging" / "quietlens.desktop"
SPEC = REPO / "packaging" / "quietlens.spec"
ICONS = REPO / "assets" / "icons"


def _spec_constant(name: str):
    """A literal assigned at the top level of the spec (parsed, not run: running needs PyInstaller)."""
    for node in ast.parse(SPEC.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{SPEC.name} assigns no {name}")


def _desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(DESKTOP.read_text(encoding="utf-8"))
    return parser["Desktop Entry"]


def test_version_comes_from_pyproject() -> None:
    expected = f"QuietLens {PYPROJECT['project']['version']}"
    for module in ("quietlens.engine.cli", "quietlens.app.main"):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected, module


def test_desktop_entry_launches_what_the_spec_builds() -> None:
    entry = _desktop_entry()
    assert entry["Type"] == "Application" and entry["Name"] == "QuietLens"
    program = entry["Exec"].split()[0]
    assert program in _spec_constant("SCRIPTS"), "Exec names no executable of the spec"
    assert entry["TryExec"] == program
    for script in _spec_constant("SCRIPTS").values():
        assert (REPO / "packaging" / f"{script}.py").is_file()
    categories = entry["Categories"].rstrip(";").split(";")
    assert {"Graphics", "MedicalSoftware"} <= set(categories)
    mime = entry["MimeType"].rstrip(";").split(";")
    assert {"image/png", "image/jpeg", "image/tiff", "application/dicom", "application/x-nifti",
            "image/x-adobe-dng"} <= set(mime)


def test_desktop_icon_is_shipped_at_every_size() -> None:
    icon = _desktop_entry()["Icon"]
    assert (ICONS / f"{icon}.svg").is_file()
    sizes = [16, 24, 32, 48, 64, 128, 256, 512]
    from PySide6.QtGui import QImage

    for size in sizes:
        image = QImage(str(ICONS / f"{icon}-{size}.png"))
        assert (image.width(), image.height()) == (size, size)
    # the spec bundles the assets package data, and that must cover the icons
    assert "icons/*" in PYPROJECT["tool"]["setuptools"]["package-data"]["quietlens.assets"]
    installer = (REPO / "packaging" / "install-desktop.sh").read_text()
    assert f'sizes="{" ".join(map(str, sizes))}"' in installer


def test_desktop_file_validates() -> None:
    validate = shutil.which("desktop-file-validate")
    if validate is None:
        pytest.skip("desktop-file-validate is not installed (apt-get install desktop-file-utils)")
    done = subprocess.run([validate, str(DESKTOP)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "error" not in done.stdout.lower()


def test_package_build_is_not_part_of_make_test() -> None:
    makefile = (REPO / "Makefile").read_text()
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "pyinstaller" not in test_recipe and "package" not in test_recipe
    assert "pyinstaller==" in " ".join(PYPROJECT["project"]["optional-dependencies"]["package"])
