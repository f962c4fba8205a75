"""The installation self-test: passes on this install, in-process and through both commands, and fails
when something it guards is broken."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quietlens.engine import catalogue, selftest
from quietlens.engine.image import KINDS
from quietlens.engine.methods import available, get

TIMEOUT = 300


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **env})


def test_engine_self_test_passes_in_process() -> None:
    seen = []
    checks = selftest.run_self_test(seen.append)
    assert seen == checks
    assert [c for c in checks if not c.ok] == []
    names = {c.name for c in checks}
    assert {f"model {m}" for m in catalogue.load(catalogue.packaged_manifest_path())} <= names
    assert {f"{m.name} on {k}" for m in available() for k in m.kinds} <= names
    assert {"version", "methods", "file formats", "dicom codecs", "no torch at inference"} <= names


@pytest.mark.slow
def test_cli_self_test_exits_0_without_torch_for_inference() -> None:
    done = _run("-m", "quietlens.engine.cli", "--self-test")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "no torch at inference" in line)
    assert lines[at].startswith("PASS") and "ran without torch" in lines[at]
    # f2n fits with torch: it must be checked after the torch check, every other method before it
    runs = {i: line.split()[1] for i, line in enumerate(lines) if " on " in line and line.startswith("PASS")}
    assert {m for i, m in runs.items() if i > at} == {"f2n"}
    assert {m for i, m in runs.items() if i < at} == {m.name for m in available()} - {"f2n"}
    assert not any(line.startswith("FAIL") for line in lines)


@pytest.mark.slow
def test_gui_self_test_exits_0_offscreen() -> None:
    done = _run("-m", "quietlens.app.main", "--self-test", QT_QPA_PLATFORM="offscreen")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS  gui preview" in done.stdout and "desktop app self-test passed" in done.stdout


def test_startup_probe_reports_a_finished_preview(tmp_path: Path) -> None:
    from quietlens.engine import io

    photo = io.save(selftest.sample("photo").noisy, tmp_path / "noisy.png")
    done = _run("-m", "quietlens.app.main", "--startup-probe", str(photo), QT_QPA_PLATFORM="offscreen")
    assert done.returncode == 0, done.stdout + done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["ok"] and facts["method"] and not facts["torch"]
    assert facts["main"] <= facts["shown"] <= facts["preview"]


def test_missing_version_metadata_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import quietlens.engine

    monkeypatch.setattr(quietlens.engine, "__version__", "0.0.0")  # what a bundle without the metadata sees
    assert not selftest.check_version().ok


def test_a_method_that_does_not_denoise_fails() -> None:
    check = selftest.check_method(get("passthrough"), "photo")
    assert not check.ok and "not denoised" in check.detail


def test_a_kind_without_a_method_fails_the_registry_check() -> None:
    check = selftest.check_registry([get("cbsn"), get("sdap")])  # as if only bsn.py had been collected
    assert not check.ok and all(k in check.detail for k in ("raw", "ct", "mr"))
    assert selftest.check_registry(available()).ok


def test_a_damaged_model_fails_its_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "user"))  # no user model may stand in for it
    shipped = catalogue.packaged_manifest_path()
    doc = json.loads(shipped.read_text())
    doc["models"] = doc["models"][:1]
    shutil.copy(shipped.parent / doc["models"][0]["file"], tmp_path)  # files must lie beside their manifest
    doc["models"][0]["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    monkeypatch.setattr(catalogue, "packaged_manifest_path", lambda: tmp_path / "manifest.json")
    check = selftest.check_model(doc["models"][0]["id"])
    assert not check.ok and "integrity" in check.detail


def test_samples_are_deterministic_and_noisy() -> None:
    for kind in KINDS:
        a, b = selftest.sample(kind), selftest.sample(kind)
        assert a.noisy.kind == kind and a.noisy.data.shape == a.clean.shape
        np.testing.assert_array_equal(a.noisy.data, b.noisy.data)
        assert np.mean((a.noisy.data - a.clean) ** 2) > 0
