"""SNR-Net: the exported graphs against PyTorch, tiling exactness, and the shipped model's manifest entry."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quietlens.engine import catalogue, runtime  # noqa: E402
from quietlens.engine.tiling import run_tiled  # noqa: E402
from quietlens.models.snrnet import (  # noqa: E402
    SNRNet, export_onnx, load_onnx_weights, parameter_count, receptive_radius,
)

MODEL_ID = "snrnet-raw"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def entry() -> catalogue.ModelEntry:
    return catalogue.load()[MODEL_ID]


def _inputs(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.random((1, 4, size, size), dtype=np.float32)
    t = (0.01 + 0.05 * rng.random((1, 1, size, size))).astype(np.float32)  # a varying noise-level map
    return z, t


@pytest.mark.parametrize("smoothers", [(), (1.0, 3.0)])
def test_onnx_export_matches_pytorch(tmp_path: Path, smoothers: tuple[float, ...]) -> None:
    torch.manual_seed(0)
    model = SNRNet(channels=(8, 8, 16, 16, 16), smoothers=smoothers).eval()
    for p in model.parameters():  # move off the zero-initialised start so every path matters
        p.data.add_(0.05 * torch.randn_like(p))
    path = export_onnx(model, tmp_path / "small.onnx")
    z, t = _inputs(48)
    with torch.no_grad():
        expected = model(torch.from_numpy(z), torch.from_numpy(t)).numpy()
    got = runtime.session(path, "cpu").run({"z": z, "t": t})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _architecture(arch: dict) -> SNRNet:
    return SNRNet(tuple(arch["channels"]), arch["blocks"], smoothers=tuple(arch.get("smoothers", ())))


def test_smoothers_average_a_flat_surface_exactly_and_tile_exactly() -> None:
    """Told to take a smoothing, the network returns a constant input unchanged to float precision (the
    Gaussians are normalised and the edges replicated); a random network's output, tiled with its measured
    receptive radius as halo, equals the untiled one."""
    torch.manual_seed(0)
    model = SNRNet(channels=(8, 8, 16, 16), smoothers=(1.0, 4.0)).eval()
    with torch.no_grad():
        model.mix.bias.copy_(torch.tensor([-30.0, -30.0, 30.0]))
        flat = torch.full((1, 4, 64, 64), 0.37)
        np.testing.assert_allclose(model(flat, torch.full((1, 1, 64, 64), 0.02)).numpy(), 0.37, atol=1e-6)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    z, t = _inputs(96, seed=4)
    x = np.concatenate([z, t], axis=1)

    def net(tile: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(tile[:, :4]), torch.from_numpy(tile[:, 4:])).numpy()

    kw = dict(halo=receptive_radius(model, size=192), multiple_of=model.multiple, bytes_per_pixel=500)
    assert kw["halo"] > 12  # the widest Gaussian's 3σ is inside it
    np.testing.assert_allclose(run_tiled(net, x, tile=32, **kw), run_tiled(net, x, tile=96, **kw), atol=1e-5)


def test_shipped_model_equals_pytorch_with_its_weights(entry: catalogue.ModelEntry) -> None:
    arch = entry.provenance["architecture"]
    model = load_onnx_weights(_architecture(arch), entry.path).eval()
    assert parameter_count(model) == arch["parameters"]
    z, t = _inputs(64, seed=1)
    with torch.no_grad():
        expected = model(torch.from_numpy(z), torch.from_numpy(t)).numpy()
    got = runtime.session(MODEL_ID, "cpu").run({"z": z, "t": t})[0]
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert receptive_radius(model, size=256) <= entry.receptive_field


def test_shipped_entry_is_complete(entry: catalogue.ModelEntry) -> None:
    assert hashlib.sha256(entry.path.read_bytes()).hexdigest() == entry.sha256
    prov = entry.provenance
    assert (entry.method, entry.modality) == ("yond", "raw")
    assert entry.tile_multiple == 2 ** (len(prov["architecture"]["channels"]) - 1)  # one per down-sampling
    for key in ("script", "command", "seed", "steps", "data", "hardware", "validation_psnr_db", "train_seconds"):
        assert key in prov, key
    assert (Path(__file__).resolve().parents[1] / prov["script"]).is_file()
    assert 2e5 < prov["architecture"]["parameters"] < 1.5e6


def test_tiled_equals_untiled_with_the_receptive_field_as_halo(entry: catalogue.ModelEntry) -> None:
    sess = runtime.session(MODEL_ID, "cpu")
    z, t = _inputs(144, seed=2)
    x = np.concatenate([z, t], axis=1)

    def net(tile: np.ndarray) -> np.ndarray:
        return sess.run({"z": tile[:, :4], "t": tile[:, 4:]})[0]

    kw = dict(halo=entry.receptive_field, multiple_of=entry.tile_multiple, bytes_per_pixel=500)
    whole = run_tiled(net, x, tile=144, **kw)
    tiled = run_tiled(net, x, tile=48, **kw)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_shipping_recipe_trains_exports_and_describes_snrnet(tmp_path: Path) -> None:
    """The snrnet-raw recipe (smoke profile) on a few prepared crops: an ONNX graph equal to the trained
    network, manifest fields the catalogue accepts, and its metrics."""
    from types import SimpleNamespace

    from quietlens.engine import catalogue
    from quietlens.models import synth, train_snrnet

    crops = [(255 * synth.skimage_photo(n)[:96, :96]).astype(np.uint8) for n in ("astronaut", "coffee", "chelsea")]
    corpus = SimpleNamespace(clean=crops * 2, source={"pack": "test"})
    ctx = SimpleNamespace(data=SimpleNamespace(corpus=lambda: corpus), out=tmp_path / "out", work=tmp_path / "work",
                          device="cpu", workers=0, provenance={"command": "test", "profile": "smoke"})
    ctx.out.mkdir()
    (path, fields), = train_snrnet.ship_train(train_snrnet.CONFIGS["smoke"], ctx)
    entry = catalogue.add(ctx.out, path, fields)
    prov = entry.provenance
    assert prov["steps"] == 20 and prov["profile"] == "smoke" and prov["data"]["pack"] == "test"
    assert set(prov["validation_psnr_db"]) == {"400", "1600", "6400", "25600"}
    arch = prov["architecture"]
    model = load_onnx_weights(_architecture(arch), path).eval()
    z, t = _inputs(64, seed=3)
    with torch.no_grad():
        expected = model(torch.from_numpy(z), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(runtime.session(path, "cpu").run({"z": z, "t": t})[0], expected, atol=2e-5)
    metrics = train_snrnet.ship_evaluate([(path, fields)], ctx)["snrnet-raw"]
    assert metrics["cpu_mp_per_s_1mp"] > 0


def test_shipped_model_keeps_its_recorded_validation_quality(entry: catalogue.ModelEntry, shared_data: Path) -> None:
    """The quality floor: the shipped graph, run by ONNX Runtime on the training recipe's held-out validation
    samples (clean photos never trained on, physics raw noise at ISO 400 … 25600-like), stays within 0.3 dB
    of the PSNR its manifest entry records from the PyTorch model at the end of training, at every ISO."""
    from quietlens.models import train_snrnet

    recorded = entry.provenance["validation_psnr_db"]
    _, held = train_snrnet.training_photos()
    items = train_snrnet.validation_set(held)
    sess = runtime.session(MODEL_ID, "cpu")
    got: dict[str, list[float]] = {}
    for it, iso in zip(items, np.repeat(train_snrnet.VALID_ISOS, len(items) // len(train_snrnet.VALID_ISOS))):
        t = np.full((1, 1, *it.z.shape[1:]), it.t, np.float32)
        den = it.vst.inverse(sess.run({"z": it.z[None].astype(np.float32), "t": t})[0][0])
        got.setdefault(f"{iso:g}", []).append(train_snrnet.psnr(den, it.clean))
    assert set(got) == set(recorded), (sorted(got), sorted(recorded))
    for iso, values in got.items():
        assert np.mean(values) > recorded[iso]["snrnet"] - 0.3, (iso, np.mean(values), recorded[iso])
        assert np.mean(values) > recorded[iso]["noisy"] + 0.5, (iso, np.mean(values), recorded[iso])
