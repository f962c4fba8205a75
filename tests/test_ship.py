"""The one shipping command (models/ship.py): a smoke-sized run end to end, and the GPU profile's sizes."""
from __future__ import annotations

import dataclasses
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
    assert "manifest.json" in files
    doc = json.loads((out / "manifest.json").read_text())
    ids = [m["id"] for m in doc["models"]]
    assert ids == [recipe.LEVEL_ID, "cbsn", "cbsn.student", "cbsn.fast", "sdap", "sdap.student", "sdap.fast",
                   "snrnet-raw"]
    assert [m["provenance"]["role"] for m in doc["models"][:7]] == ["level"] + ["teacher", "student", "fast"] * 2
    assert doc["models"][2]["provenance"]["inference"]["level_model"] == recipe.LEVEL_ID
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
        if m["id"] == recipe.LEVEL_ID:  # measured through the student told its estimate
            continue
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
    assert psnr == pytest.approx(doc["models"][2]["provenance"]["metrics"]["cc"]["psnr"], abs=0.01)
    # a second run resumes from the finished checkpoints and writes the same graphs
    first = {m["id"]: m["sha256"] for m in doc["models"]}
    assert ship.main(["--profile", "smoke", "--out", str(out), "--work", str(work), "--threads", "1",
                      "--only", "sdap"]) == 0
    doc = json.loads((out / "manifest.json").read_text())
    assert {m["id"]: m["sha256"] for m in doc["models"]} == first


def test_every_phase_of_the_gpu_profile_is_budgeted():
    """`--minutes` fits a GPU lease by sharing it among the phases the estimate names: a phase `recipe.run`
    asks a share for under another name would run its full length. (The estimate's bank part is timed on
    this CPU, so its total is not asserted here; the H200 run of `--minutes 7` took 513 s, README.)"""
    rows = dict(ship.estimate("gpu", list(recipe.METHODS)))
    asked = {recipe.phase_name("bank")}
    for method in recipe.METHODS:
        cfg = ship.photo_configs(method)["gpu"]
        asked |= {recipe.phase_name("teacher", method)} | ({recipe.phase_name("level")} if cfg.level else set())
        asked |= {recipe.phase_name(kind, method, plan.role) for plan in cfg.students for kind in ("pretrain", "distil")}
        asked |= {recipe.phase_name("tune", role=plan.role) for plan in cfg.students if plan.tune}
    assert recipe.phase_name("level") in asked  # the GPU profile trains every shipped photo graph
    assert set(rows) == asked and all(seconds > 0 for seconds in rows.values())
    raw = ship.estimate("gpu", ["snrnet-raw"])  # a run of its own (--only snrnet-raw)
    assert len(raw) == 1 and 0 < raw[0][1] <= 9 * 60
    # gpu-teacher: the whole lease to C-BSN's teacher, after the (smaller) bank
    assert [phase for phase, _ in ship.estimate("gpu-teacher")] == [recipe.phase_name("bank"),
                                                                    recipe.phase_name("teacher", "cbsn")]


def test_configs_are_validated(tmp_path):
    for method in recipe.METHODS:  # cpu-distil reuses the cpu profile's pretraining (the same checkpoints)
        configs = ship.photo_configs(method)
        assert [p.pretrain for p in configs["cpu-distil"].students] == [p.pretrain for p in configs["cpu"].students]
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
    told = cfg.student("student")  # C-BSN's student is told the noise level: it needs its tune phase ...
    assert told.level and told.tune is not None and cfg.level is not None
    with pytest.raises(QuietLensError, match="tune phase"):
        recipe.PhotoConfig("cbsn", cfg.teacher, cfg.train, (dataclasses.replace(told, tune=None),))
    with pytest.raises(QuietLensError, match="level network"):  # ... and a level network to be told by
        recipe.run(dataclasses.replace(cfg, level=None), recipe.Corpus([], []), tmp_path)


def test_the_rate_rises_over_the_warm_up_then_halves_at_evenly_spaced_steps():
    phase = recipe.Phase(300, 1, 20, 1e-3, halvings=2, warmup=50)
    rates = np.array([recipe._lr_at(step, phase) for step in range(300)])
    np.testing.assert_allclose(rates[:50], 1e-3 * np.arange(1, 51) / 50)
    np.testing.assert_allclose(rates[50:], np.repeat([1e-3, 5e-4, 2.5e-4], 100)[50:])
    assert recipe._lr_at(0, dataclasses.replace(phase, warmup=0)) == 1e-3


def test_a_budgeted_phase_stops_in_its_share_with_its_schedule_compressed(tmp_path, monkeypatch):
    """``--minutes``: a phase whose steps would overrun its share of the budget measures its pace and
    stops early, halving its learning rate at the shortened run's own milestones; the checkpoint records
    the shortened length, so a second run (e.g. the other method sharing the pretraining) does not go on."""
    import time
    from dataclasses import replace

    import torch

    net = torch.nn.Linear(4, 1)

    def make(step):
        time.sleep(0.01)  # ~10 ms per batch: 1,000 steps would take 10 s
        return np.ones((2, 4), np.float32)

    def loss_fn(batch, step, gen):
        return net(torch.from_numpy(batch)).pow(2).mean(), {}

    phase = recipe.Phase(1000, 2, 20, 1e-3, halvings=1)
    recipe.fit(net, replace(phase, steps=1), make, loss_fn, seed=0, checkpoint=None, device="cpu")  # one-time imports
    budget = recipe.Budget(3.0, {"a": 1.0, "b": 1.0})  # "a" may take half: 1.5 s
    seconds = budget.share("a")
    assert seconds == pytest.approx(1.5, abs=0.05) and budget.share("a") is None
    start = time.perf_counter()
    seen = []
    original = recipe._lr_at
    monkeypatch.setattr(recipe, "_lr_at", lambda step, p: (seen.append((step, p.steps)), original(step, p))[1])
    info = recipe.fit(net, phase, make, loss_fn, seed=0, checkpoint=tmp_path / "c.pt", device="cpu", seconds=seconds)
    took = time.perf_counter() - start
    assert took < 1.5 * 1.1 + 0.5 and recipe.PACE_STEPS[1] <= info["steps"] < 1000
    assert info["planned_steps"] == 1000 and seen[-1][1] == info["steps"]  # the schedule ends where the run does
    again = recipe.fit(torch.nn.Linear(4, 1), phase, make, loss_fn, seed=0, checkpoint=tmp_path / "c.pt", device="cpu")
    assert again["steps"] == info["steps"]  # resumed as finished
    assert budget.share("b") == pytest.approx(3.0 - took, abs=0.2)  # what "a" left goes to "b"


def test_evaluate_measures_an_unmeasured_run_like_a_measured_one(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "userdata"))
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--profile", "smoke", "--out", str(out), "--work", str(work), "--threads", "1", "--only", "cbsn"]
    assert ship.main(args + ["--skip-metrics"]) == 0
    doc = json.loads((out / "manifest.json").read_text())
    assert all(m["provenance"]["metrics"] == {} for m in doc["models"])
    assert doc["models"][0]["provenance"]["code"]["sources_sha256"]
    assert ship.main(["evaluate"] + args) == 0
    measured = {m["id"]: m["provenance"]["metrics"] for m in json.loads((out / "manifest.json").read_text())["models"]}
    assert ship.main(args) == 0  # trained again (from its checkpoints) and measured at once
    at_once = {m["id"]: m["provenance"]["metrics"] for m in json.loads((out / "manifest.json").read_text())["models"]}
    assert measured == at_once and set(measured["cbsn.student"]) >= {"sidd", "cc", "kodak24 clean"}


def test_students_distil_from_a_given_teacher_graph_which_ships_unchanged(shared_data, tmp_path, monkeypatch):
    """--teachers DIR (how the CPU students learn from a GPU run's teachers): no teacher is trained, the
    students are distilled from the graph's outputs (the same students as from the PyTorch teacher it was
    exported from), and the teacher's graph and record are copied as they were (measurements included)."""
    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "userdata"))
    gpu, out = tmp_path / "gpu", tmp_path / "out"
    base = ["--profile", "smoke", "--threads", "1", "--only", "cbsn"]
    assert ship.main(base + ["--out", str(gpu), "--work", str(tmp_path / "w1")]) == 0
    assert ship.main(base + ["--out", str(out), "--work", str(tmp_path / "w2"), "--teachers", str(gpu)]) == 0
    given = {m["id"]: m for m in json.loads((gpu / "manifest.json").read_text())["models"]}
    doc = {m["id"]: m for m in json.loads((out / "manifest.json").read_text())["models"]}
    assert doc["cbsn"] == given["cbsn"] and (out / "cbsn.onnx").read_bytes() == (gpu / "cbsn.onnx").read_bytes()
    student = doc["cbsn.student"]["provenance"]
    assert student["teacher_graph"]["sha256"] == given["cbsn"]["sha256"] and "--teachers gpu" in student["command"]
    assert student["training"]["steps"] > 0 and student["metrics"]["cc"]["psnr"] > 0
    assert not (tmp_path / "w2" / "cbsn" / "teacher.pt").exists()  # no teacher trained
    # the graph stands in for the PyTorch teacher it was exported from: the same students come out
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 6, 64, 64)).astype(np.float32)  # image + told level
    for role, planes in (("cbsn.student", 6), ("cbsn.fast", 3)):
        a, b = (ort.InferenceSession(str(d / f"{role}.onnx")).run(None, {"x": x[:, :planes]})[0] for d in (gpu, out))
        assert np.abs(a - b).max() < 1e-3, role
    with pytest.raises(SystemExit, match="--teachers"):
        ship.main(["--profile", "cpu-distil", "--out", str(out)])

    # --base DIR (cpu-refine: the shipped students distilled on): the students start from the given graphs
    # and are told by the level network beside them — no pretraining or level network is trained — and
    # their records say what they started from. A plain base student that the recipe now tells the level
    # (the fast one here) learns the level input first, from its base weights.
    cfg = ship.RECIPES["cbsn"].configs["smoke"]
    told_fast = [dataclasses.replace(p, arch={**p.arch, "level": 1}, tune=recipe.Phase(3, 2, 32, 1e-3))
                 if p.role == "fast" else p for p in cfg.students]
    monkeypatch.setitem(ship.RECIPES["cbsn"].configs, "smoke", dataclasses.replace(cfg, students=tuple(told_fast)))
    refined, work = tmp_path / "refined", tmp_path / "w3"
    assert ship.main(base + ["--out", str(refined), "--work", str(work), "--teachers", str(gpu), "--base", str(gpu)]) == 0
    assert not any(p.name.startswith(("pretrain-", "level-")) for p in work.iterdir())
    assert len([p for p in work.iterdir() if p.name.startswith("tune-")]) == 1
    doc = {m["id"]: m for m in json.loads((refined / "manifest.json").read_text())["models"]}
    assert recipe.LEVEL_ID not in doc and "--base gpu" in doc["cbsn.student"]["provenance"]["command"]
    for role in ("cbsn.student", "cbsn.fast"):
        assert doc[role]["provenance"]["base_graphs"][role]["sha256"] == given[role]["sha256"]
        assert doc[role]["provenance"]["training"]["steps"] > 0
        assert doc[role]["provenance"]["inference"]["level_model"] == recipe.LEVEL_ID
    assert "level_tuning" in doc["cbsn.fast"]["provenance"] and "level_tuning" not in doc["cbsn.student"]["provenance"]
    fast = ort.InferenceSession(str(refined / "cbsn.fast.onnx"))
    assert fast.get_inputs()[0].shape[1] == 6  # image + told level
    with pytest.raises(SystemExit, match="--base"):
        ship.main(["--profile", "cpu-refine", "--teachers", str(gpu), "--out", str(out)])

    # --profile gpu-teacher --base DIR: C-BSN's teacher is trained on from the base's teacher and nothing
    # else is trained (cpu-refine distils the students from it after). At a vanishing rate the teacher that
    # comes out is the base's: a teacher started afresh would differ everywhere.
    cfg = ship.RECIPES["cbsn"].configs["gpu-teacher"]
    smoke = ship.RECIPES["cbsn"].configs["smoke"]
    monkeypatch.setitem(ship.RECIPES["cbsn"].configs, "gpu-teacher", dataclasses.replace(
        cfg, teacher=smoke.teacher, train=recipe.Phase(4, 2, 40, 1e-9), bank=32, bank_side=64, checkpoint_every=2))
    on, work = tmp_path / "on", tmp_path / "w4"
    args = ["--profile", "gpu-teacher", "--threads", "1", "--out", str(on), "--work", str(work),
            "--data", str(tmp_path / "w1" / "data.npz"), "--skip-metrics"]
    with pytest.raises(SystemExit, match="--base"):
        ship.main(args)
    with pytest.raises(SystemExit, match="no recipe for sdap"):
        ship.main(args + ["--base", str(gpu), "--only", "sdap"])
    assert ship.main(args + ["--base", str(gpu)]) == 0
    doc = {m["id"]: m for m in json.loads((on / "manifest.json").read_text())["models"]}
    prov = doc["cbsn"]["provenance"]
    assert list(doc) == ["cbsn"] and prov["role"] == "teacher" and prov["training"]["steps"] == 4
    assert prov["base_graphs"] == {"cbsn": {k: given["cbsn"][k] for k in ("file", "sha256")}
                                   | {"command": given["cbsn"]["provenance"]["command"]}}
    assert [p.name for p in work.rglob("*.pt")] == ["teacher.pt"]  # no student, no level network
    x = np.random.default_rng(0).random((1, 3, 60, 60), dtype=np.float32)
    a, b = (ort.InferenceSession(str(d / "cbsn.onnx")).run(None, {"x": x})[0] for d in (gpu, on))
    assert np.abs(a - b).max() < 1e-4 and np.abs(a - x).mean() > 1e-3
    # such a teacher records no students: a family of it and earlier students still adapts with both
    from quietlens.engine import catalogue

    entries = {**catalogue.read(gpu / "manifest.json"), **catalogue.read(on / "manifest.json")}
    found = {role: (entries[i], catalogue.verified_bytes(entries[i]))
             for role, i in (("teacher", "cbsn"), ("student", "cbsn.student"), ("fast", "cbsn.fast"))}
    family, states = recipe.base_weights(found, "cbsn")
    assert [p.role for p in family.students] == ["student", "fast"] and set(states) == {"teacher", "student", "fast"}
