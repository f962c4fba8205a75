"""Before the first window: can Qt open one here? If not, say why and how to fix it, instead of Qt's abort.

On Linux, Qt's X11 platform plugin (``libqxcb.so``) links against several ``libxcb-*`` libraries that
minimal systems lack; Qt then only says "xcb-cursor0 is needed", whatever is really missing, and aborts.
The dynamic linker knows which ones are missing (``ldd`` on the plugin), and Debian-family package names
follow from their sonames, so the message names the exact ``apt-get install`` line.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping

# Debian/Ubuntu packages whose names do not follow the soname rule of :func:`debian_package`.
PACKAGES = {"libglib-2.0.so.0": "libglib2.0-0", "libgobject-2.0.so.0": "libglib2.0-0",
            "libgthread-2.0.so.0": "libglib2.0-0", "libz.so.1": "zlib1g"}


def xcb_plugin() -> Path | None:
    """The X11 platform plugin of the Qt that PySide6 uses (in a bundle too), if it is there."""
    from PySide6.QtCore import QLibraryInfo  # no QApplication needed

    folder = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms"
    found = sorted(folder.glob("libqxcb*.so*"))
    return found[0] if found else None


def missing_libraries(library: Path) -> list[str]:
    """The sonames ``library`` needs (directly or through its dependencies) that the dynamic linker cannot
    find: all of them from ``ldd``; without ``ldd``, the first one that loading it reports."""
    ldd = shutil.which("ldd")
    if ldd:
        try:
            listing = subprocess.run([ldd, str(library)], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            listing = None
        if listing is not None:
            return sorted(set(re.findall(r"^\s*(\S+) => not found", listing, re.MULTILINE)))
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        found = re.search(r"(\S+\.so[.\d]*): cannot open shared object file", str(exc))
        return [found.group(1)] if found else []
    return []


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package holding a library: its soname's base name and major version, with a
    hyphen between them when the name ends in a digit (``libxcb-icccm.so.4`` → ``libxcb-icccm4``,
    ``libxkbcommon-x11.so.0`` → ``libxkbcommon-x11-0``)."""
    if soname in PACKAGES:
        return PACKAGES[soname]
    match = re.match(r"(lib.+?)\.so\.(\d+)", soname)
    if not match:
        return soname
    base, major = match.group(1).lower(), match.group(2)
    return f"{base}{'-' if base[-1].isdigit() else ''}{major}"


def uses_xcb(env: Mapping[str, str]) -> bool:
    """Whether Qt will pick its X11 platform plugin (as Qt 6 does on Linux unless told otherwise or in a
    Wayland session)."""
    if not sys.platform.startswith("linux"):
        return False
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.split(";")[0].startswith("xcb")
    return not (env.get("WAYLAND_DISPLAY") and env.get("XDG_SESSION_TYPE") == "wayland")


def window_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why the desktop app cannot open a window here, with what to do about it; None when it can."""
    env = os.environ if env is None else env
    if not uses_xcb(env):
        return None
    plugin = xcb_plugin()
    missing = missing_libraries(plugin) if plugin is not None else []
    instead = ("Without a window, use the command line (quietlens --help), or check the install with\n"
               "    QT_QPA_PLATFORM=offscreen quietlens-gui --self-test")
    if missing:
        packages = " ".join(dict.fromkeys(debian_package(m) for m in missing))
        return (f"cannot open a window: Qt's X11 platform plugin ({plugin.name}) needs libraries that are not "
                f"installed: {', '.join(missing)}.\nInstall them (Debian, Ubuntu):\n"
                f"    sudo apt-get install {packages}\n{instead}")
    if not env.get("DISPLAY"):
        return f"cannot open a window: no display (DISPLAY is not set).\n{instead}"
    return None
