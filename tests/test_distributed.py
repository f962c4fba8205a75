"""The batch on a Dask cluster (a LocalCluster on loopback, 2 worker processes of 1 thread): the same
results, report and resume as in-process; workers keep their ONNX sessions between files."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from quietlens.engine import batch, io, runtime  # noqa: E402
from quietlens.engine.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0", silence_logs=40) as local:
        yield local


@pytest.fixture
def tree(tmp_path, srgb_pairs, mr_series_dir, pydicom_ct) -> Path:
    src = tmp_path / "in"
    (src / "photos" / "sub dir").mkdir(parents=True)
    for i, (noisy, _) in enumerate(srgb_pairs[:4]):
        shutil.copy(noisy, src / "photos" / f"{i} {noisy.name}")
    shutil.copy(srgb_pairs[4][0], src / "photos" / "sub dir" / "ünïcode.png")
    (src / "photos" / "broken.png").write_bytes(srgb_pairs[0][0].read_bytes()[:3000])
    shutil.copy(pydicom_ct, src / "ct.dcm")
    shutil.copytree(mr_series_dir, src / "series1")
    return src


def comparable(out: Path) -> list[tuple]:
    files = json.loads((out / batch.REPORT_NAME).read_text())["files"]
    return [(Path(f["input"]).name, Path(f["output"]).relative_to(out).as_posix(), f["status"], f["method"],
             f["params"], f["provider"], f["model_sha256"], f["error"].split(": ")[-1]) for f in files]


def test_cluster_batch_matches_in_process_and_resumes(tree, tmp_path, cluster):
    local, remote = tmp_path / "local", tmp_path / "remote"
    batch.run_batch(tree, local, "passthrough")
    seen = []
    results = batch.run_batch(tree, remote, "passthrough", scheduler=cluster.scheduler_address,
                              on_file=lambda k, n, r: seen.append((k, n)))
    assert comparable(remote) == comparable(local)
    assert sorted(seen) == [(k, 8) for k in range(8)]
    assert [r.status for r in results].count("failed") == 1
    for out in sorted(local.rglob("*.png")) + [local / "ct.dcm", local / "series1"]:
        twin = remote / out.relative_to(local)
        np.testing.assert_array_equal(io.load(twin).data, io.load(out).data)

    (remote / "ct.dcm").unlink()
    shutil.rmtree(remote / "series1")
    batch.run_batch(tree, remote, "passthrough", scheduler=cluster.scheduler_address)
    counts = json.loads((remote / batch.REPORT_NAME).read_text())["counts"]
    assert counts == {"done": 2, "skipped": 5, "failed": 1, "cancelled": 0}


def test_workers_reuse_their_onnx_sessions(cluster, tmp_path):
    """runtime.session caches per process: each worker builds a model's session once for all its tasks."""
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["k"]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = tmp_path / "identity.onnx"
    model.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())

    def probe(path: str, _: int) -> tuple[int, int, float]:
        sess = runtime.session(Path(path), "cpu")
        return os.getpid(), id(sess), float(sess(np.ones(3, np.float32)).sum())

    with distributed.Client(cluster) as client:
        answers = client.gather(client.map(probe, [str(model)] * 12, range(12), pure=False))
    sessions: dict[int, set[int]] = {}
    for pid, session_id, total in answers:
        assert total == 3.0
        sessions.setdefault(pid, set()).add(session_id)
    assert sessions and all(len(ids) == 1 for ids in sessions.values())


def test_cli_workers_with_timeout(tree, tmp_path):
    """--workers starts (and closes) a LocalCluster; with --timeout each worker runs its files in a
    killable helper process of its own."""
    out = tmp_path / "out"
    assert main(["batch", str(tree), "-o", str(out), "--method", "passthrough", "--workers", "1",
                 "--timeout", "60", "-q"]) == 1  # broken.png
    report = json.loads((out / batch.REPORT_NAME).read_text())
    assert report["counts"] == {"done": 7, "skipped": 0, "failed": 1, "cancelled": 0}
    assert all(f["provider"] == "cpu" for f in report["files"] if f["status"] == "done")
    np.testing.assert_array_equal(io.load(out / "series1").data, io.load(tree / "series1").data)


def test_unreachable_scheduler_is_a_clear_error(srgb_pairs, tmp_path, capsys, monkeypatch):
    from quietlens.engine import distributed as scale_out

    monkeypatch.setattr(scale_out, "CONNECT_TIMEOUT", 1)
    (tmp_path / "in").mkdir()
    shutil.copy(srgb_pairs[0][0], tmp_path / "in" / "a.png")
    code = main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--method", "passthrough",
                 "--scheduler", "tcp://127.0.0.1:9", "-q"])
    assert code == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err


def test_cancel_on_a_cluster_then_resume(tree, tmp_path, cluster):
    """Cancelling stops queuing files; the same command afterwards finishes them, nothing partial left."""
    from quietlens.engine.progress import CancelToken

    out, token = tmp_path / "out", CancelToken()
    results = batch.run_batch(tree, out, "passthrough", scheduler=cluster.scheduler_address, cancel=token,
                              on_file=lambda k, n, r: token.cancel())
    statuses = [r.status for r in results]
    assert "cancelled" in statuses and len(statuses) == 8
    assert all(Path(r.output).exists() for r in results if r.status == "done")
    time.sleep(1)  # a file a worker was already running when cancelled still finishes there (Dask cannot stop it)
    batch.run_batch(tree, out, "passthrough", scheduler=cluster.scheduler_address)
    counts = json.loads((out / batch.REPORT_NAME).read_text())["counts"]
    assert counts["done"] + counts["skipped"] == 7 and counts["cancelled"] == 0
    assert not [p for p in out.rglob(".*") if io.PARTIAL_NAME.match(p.name)]
