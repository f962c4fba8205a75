"""The one shipping command (models/ship.py): a smoke-sized run end to end, and the GPU profile's sizes."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from quietlens.engine.errors import QuietLensError
from quietlens.models import recipe, ship

from photo_eval import engine_outputs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_smoke_profile_writes_graphs_and_measured_manifest_entries(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "userdata"))
    out, work = tmp_path / "out", tmp_path / "work"
    assert ship.main(["--profile", "smoke", "--out", str(out), "--work", str(work), "--threads", "1"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= ship.MAX_FILES and "manifest.json" in files
    doc = json.loads((out / "manifest.json").read_text())
    ids = [m["id"] for m in doc["models"]]
    assert ids == ["cbsn", "cbsn.student", "cbsn.fast", "sdap", "sdap.student", "sdap.fast", "snrnet-raw"]
    assert [m["provenance"]["role"] for m in doc["models"][:6]] == ["teacher", "student", "fast"] * 2
    for m in doc["models"]:
        data = (out / m["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == m["sha256"] and len(data) <= ship.MAX_FILE_MIB * 2**20
        prov = m["provenance"]
        if m["id"] == "snrnet-raw":  # YOND's raw denoiser, trained on the same pack's clean crops
            assert prov["data"]["pack_sha256"] and prov["steps"] == 20 and prov["metrics"]["cpu_mp_per_s_1mp"] > 0
            continue
        cfg = recipe.PhotoConfig.from_dict(prov["config"])  # the recipe round-trips
        assert cfg.seed == 0 and prov["data"]["pack_sha256"] and prov["hardware"]["cores"]
        assert prov["training"]["steps"] > 0
        # measured through the engine on every evaluation set
        assert {"sidd", "cc", "kodak24 clean"} <= set(prov["metrics"])
        assert all(np.isfinite(v["psnr"]) for v in prov["metrics"].values())
    # the engine gives exactly the recorded numbers when these graphs are registered as user models
    from quietlens.engine import catalogue

    for m in doc["models"]:
        catalogue.register_user_model(out / m["file"], {k: v for k, v in m.items() if k not in ("file", "sha256")})
    sets = recipe.evaluation_sets(small=True)
    again = engine_outputs("cbsn", "cbsn", "student", [n for _, n, _ in sets["cc"]])
    psnr = np.mean([recipe.scores(ref, o)[0] for (_, _, ref), o in zip(sets["cc"], again)])
    assert psnr == pytest.approx(doc["models"][1]["provenance"]["metrics"]["cc"]["psnr"], abs=0.01)
    # a second run resumes from the finished checkpoints and writes the same graphs
    first = {m["id"]: m["sha256"] for m in doc["models"]}
    assert ship.main(["--profile", "smoke", "--out", str(out), "--work", str(work), "--threads", "1",
                      "--only", "sdap"]) == 0
    doc = json.loads((out / "manifest.json").read_text())
    assert {m["id"]: m["sha256"] for m in doc["models"]} == first


def test_gpu_profile_fits_nine_minutes_of_one_h200():
    rows = ship.estimate("gpu", list(recipe.METHODS))
    assert sum(seconds for _, seconds in rows) <= 9 * 60
    assert any("pretraining (shared)" in name for name, _ in rows)
    raw = ship.estimate("gpu", ["snrnet-raw"])  # a run of its own (--only snrnet-raw)
    assert len(raw) == 1 and 0 < raw[0][1] <= 9 * 60


def test_configs_are_validated():
    cfg = ship.photo_configs("cbsn")["cpu"]
    assert recipe.PhotoConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(QuietLensError, match="unknown method"):
        recipe.PhotoConfig("dncnn", cfg.teacher, cfg.train, cfg.students)
    with pytest.raises(QuietLensError, match="blind"):
        recipe.PhotoConfig("sdap", cfg.teacher, cfg.train, cfg.students, supervised=1.0)
    with pytest.raises(QuietLensError, match="multiple of 10"):
        recipe.PhotoConfig("cbsn", cfg.teacher, recipe.Phase(10, 2, 64, 1e-3), cfg.students)
    with pytest.raises(QuietLensError, match="network size"):
        recipe.PhotoConfig("cbsn", {"width": 32, "depth": 3}, cfg.train, cfg.students)
    with pytest.raises(QuietLensError, match="unknown"):
        recipe.PhotoConfig.from_dict({**cfg.to_dict(), "lr": 1e-3})
    with pytest.raises(QuietLensError, match="roles"):
        recipe.PhotoConfig("cbsn", cfg.teacher, cfg.train, cfg.students + cfg.students[:1])
