"""C-BSN and SDAP: blind spot, losses, export, tiling, adaptation with `quietlens train`, bad inputs.

Networks here are tiny (a few channels, one or two dilated modules) so the whole file runs in well under
a minute on a 2-core CPU; the shipped sizes are exercised by tests/benchmarks/bench_cbsn_sdap.py.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from quietlens.engine import catalogue, pipeline
from quietlens.engine.errors import Cancelled, InvalidImageError, ModelError, QuietLensError
from quietlens.engine.image import Image
from quietlens.engine.methods import get
from quietlens.engine.progress import CancelToken
from quietlens.models import bsn, recipe
from quietlens.models.bsn import (DBSN, SDAPInference, BSNConfig, CBSNInference, Student, StudentConfig, cbsn_loss,
                                  pd, pd_inverse, random_subimages, random_subsample, sdap_loss)

TINY = BSNConfig(width=8, modules=2)
TINY_STUDENT = StudentConfig(width=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def user_data(tmp_path, monkeypatch):
    """A private user data folder, so registered test models never touch the real one."""
    folder = tmp_path / "userdata"
    monkeypatch.setenv("QUIETLENS_DATA", str(folder))
    return folder


def _noisy(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    clean = np.stack([0.5 + 0.3 * np.sin(6 * xx + c) * np.cos(4 * yy) for c in range(channels)], axis=2)
    return np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)


def _tiny_config(method: str, level: bool = False, **changes) -> recipe.PhotoConfig:
    """A recipe small enough for tests: an 8-wide teacher, 4-wide students (``level``: the student told
    the noise level, with a tiny level network)."""
    phase = recipe.Phase(6, 2, 20, 1e-3, halvings=1)
    students = tuple(recipe.StudentPlan(role, {**TINY_STUDENT.to_dict(), "levels": 2, "full": full,
                                               "level": int(level and role == "student")}, phase, phase,
                                        tune=phase if level and role == "student" else None)
                     for role, full in (("student", 4), ("fast", 0)))
    base = recipe.PhotoConfig(method, {"width": TINY.width, "modules": TINY.modules}, phase, students,
                              supervised=1.0 if method == "cbsn" else 0.0, init="random", checkpoint_every=100,
                              level=phase if level else None)
    return dataclasses.replace(base, **changes)


def _register_tiny(family: str, method: str, seed: int = 0, net: BSNConfig = TINY, level: bool = False,
                   **changes) -> None:
    """A tiny teacher + students in the user manifest (as `quietlens train` would leave them); a teacher
    of width ≥ 12 starts as the neighbour-mean blind denoiser, a smaller one random. ``level``: the
    student is told the noise level, estimated by a tiny level network registered with it."""
    torch.manual_seed(seed)
    cfg = _tiny_config(method, level, teacher={"width": net.width, "modules": net.modules}, **changes)
    dbsn = DBSN(net).init_neighbour_mean() if net.width >= 12 else DBSN(net)
    modules = {"teacher": {"cbsn": CBSNInference, "sdap": SDAPInference}[method](dbsn)}
    modules.update({p.role: Student(StudentConfig(**p.arch)) for p in cfg.students})
    if level:
        modules["level"] = bsn.LevelNet(bsn.LevelConfig(width=4, depth=3))
        with torch.no_grad():  # an untrained student is the identity and ignores the level (zero layers)
            for conv in (modules["student"].level_enc, modules["student"].level_head, modules["student"].tail[-1]):
                conv.weight.normal_(0, 0.5)
    folder = catalogue.user_data_dir() / "tmp-graphs"
    for path, fields in recipe.export(recipe.Result(modules, {}), family, method,
                                      {"seed": seed, "config": cfg.to_dict()}, folder):
        catalogue.register_user_model(path, fields)


# -- network and losses ------------------------------------------------------------------------------

def _input_gradient(net, x, blind, y0, x0):
    x = x.clone().requires_grad_(True)
    net(x, blind=blind)[0, :, y0, x0].sum().backward()
    return x.grad[0].abs().sum(0)


def test_blind_spot_gradient_is_exactly_zero_at_the_centre():
    torch.manual_seed(0)
    net = DBSN(TINY)
    x = torch.randn(1, 3, 41, 41)
    g = _input_gradient(net, x, True, 20, 20)
    assert g[20, 20].item() == 0.0
    assert g[19:22, 19:22].sum() > 0 and g[18, 20] > 0 and g[20, 22] > 0  # the neighbours are seen
    assert _input_gradient(net, x, False, 20, 20)[20, 20] > 0  # non-blind mode sees the centre


def test_neighbour_mean_initialisation_is_a_blind_ring_average():
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = DBSN(BSNConfig(width=12, modules=2)).init_neighbour_mean()
    x = torch.randn(1, 3, 24, 24)
    rings = []
    for k in (3, 5):
        ring = torch.ones(3, 1, k, k)
        ring[..., k // 2, k // 2] = 0
        rings.append(F.conv2d(x, ring / ring[0].sum(), padding=k // 2, groups=3))
    with torch.no_grad():
        assert torch.allclose(net(x), 0.5 * (rings[0] + rings[1]), atol=1e-5)
    with pytest.raises(ValueError, match="width"):
        DBSN(TINY).init_neighbour_mean()


def test_radius_is_the_true_dependency_range():
    net = DBSN(TINY)
    assert net.radius == 2 + 3 * TINY.modules
    assert bsn.receptive_radius(CBSNInference(net)) == net.radius
    assert bsn.receptive_radius(SDAPInference(net)) == 3 * net.radius
    assert DBSN().radius == 29 and sum(p.numel() for p in DBSN().parameters()) == 3_656_131


def test_pd_and_its_inverse():
    x = torch.randn(2, 3, 20, 30)
    for s in (2, 5):
        assert torch.equal(pd_inverse(pd(x, s), s), x)
    assert torch.equal(pd(x, 5).reshape(2, 25, 3, 4, 6)[:, 7], x[:, :, 1::5, 2::5])


def test_random_subimages_are_a_permutation_of_every_cell():
    x = torch.arange(2 * 3 * 10 * 15, dtype=torch.float32).reshape(2, 3, 10, 15)
    subs = random_subimages(x, 5, torch.Generator().manual_seed(0))  # (25, N, C, 2, 3)
    assert subs.shape == (25, 2, 3, 2, 3)
    cells = x.reshape(2, 3, 2, 5, 3, 5).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 2, 3, 25)
    got = subs.permute(1, 2, 3, 4, 0)
    assert torch.equal(got.sort(-1).values, cells.sort(-1).values)  # each cell: its 25 pixels, once each
    # one permutation per cell, shared by the channels
    first = got[..., 0] - cells[..., 0]  # offset of sub-image 0's pixel within its cell
    assert torch.equal(first[:, 0], first[:, 1])
    assert len(torch.unique(first[:, 0])) > 1  # cells do not all share one permutation


def test_random_subsample_picks_one_pixel_per_cell():
    x = torch.randn(1, 3, 6, 8)
    index = torch.randint(0, 4, (1, 3, 4))
    out = random_subsample(x, index)
    for i in range(3):
        for j in range(4):
            k = int(index[0, i, j])
            assert torch.equal(out[0, :, i, j], x[0, :, 2 * i + k // 2, 2 * j + k % 2])


def test_losses_on_tiny_inputs():
    torch.manual_seed(0)
    net = DBSN(TINY)
    z = torch.randn(2, 3, 20, 20)
    loss, parts = cbsn_loss(net, z, 0.0, torch.Generator().manual_seed(0))
    assert set(parts) == {"blind"} and torch.isfinite(loss)
    loss.backward()
    centre = net.branch2.masked.weight.grad[..., 1, 1]
    assert torch.count_nonzero(centre) == 0  # the blind terms never train the centre taps
    net.zero_grad()
    loss, parts = cbsn_loss(net, z, 1.0, torch.Generator().manual_seed(0))
    assert set(parts) == {"blind", "self", "inv"}
    loss.backward()
    assert torch.count_nonzero(net.branch2.masked.weight.grad[..., 1, 1]) > 0
    # SDAP: the sum over the 25 sub-images of the mean |f(s_j) - s_(j+1)|
    loss, _ = sdap_loss(net, z, torch.Generator().manual_seed(1))
    subs = random_subimages(z, 5, torch.Generator().manual_seed(1))
    with torch.no_grad():
        manual = sum((net(subs[j]) - subs[(j + 1) % 25]).abs().mean() for j in range(25))
    assert torch.allclose(loss, manual, rtol=1e-5)


# -- export --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [CBSNInference(DBSN(TINY)), SDAPInference(DBSN(TINY)), Student(TINY_STUDENT)],
                         ids=["cbsn", "sdap", "student"])
def test_export_parity_and_weights_read_back(module):
    data = bsn.export_checked(module, size=64)  # raises on a mismatch
    assert bsn.parity(module, data, size=48, seed=3) < 1e-4
    if isinstance(module, SDAPInference):  # blind graph: the masks are baked into the constants
        back = bsn.load_weights_from_onnx(SDAPInference(DBSN(TINY)), data)
        assert torch.count_nonzero(back.net.branch2.masked.weight[..., 1, 1]) == 0
        assert torch.count_nonzero(back.net.branch3.masked.weight[..., 2, 2]) == 0
    fresh = bsn.load_weights_from_onnx(type(module)(DBSN(TINY)) if hasattr(module, "net")
                                              else Student(TINY_STUDENT), data)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(fresh(x), module(x), atol=1e-5)


def test_a_level_student_starts_as_its_plain_student():
    """A student told the noise level, made from a plain one, computes what the plain one did whatever it
    is told (its level layers start at zero), and exports with the level planes as 3 more inputs."""
    plain = Student(dataclasses.replace(TINY_STUDENT, full=4))
    told = Student(dataclasses.replace(TINY_STUDENT, full=4, level=1)).load_plain(plain.state_dict())
    x = torch.randn(2, 6, 32, 40)
    with torch.no_grad():
        assert torch.equal(told(x), plain(x[:, :3]))
    assert bsn.receptive_radius(told) == bsn.receptive_radius(plain)
    with torch.no_grad():
        told.level_enc.weight.normal_()
        told.level_head.weight.normal_()
    data = bsn.export_checked(told, size=64)
    assert bsn.parity(told, data, size=48, seed=3) < 1e-4
    with pytest.raises(ValueError, match="plain student"):
        Student(dataclasses.replace(TINY_STUDENT, full=4, level=1)).load_plain(told.state_dict())


# -- the engine methods ----------------------------------------------------------------------------

def _run(method_name, family, data, messages=None, **params):
    method = get(method_name).with_model(family)
    image = Image(data, "photo", "HWC", "png")
    report = (lambda f, m="": messages.append(m)) if messages is not None else (lambda f, m="": None)
    return pipeline.denoise(image, method, params, provider="cpu", progress=report).image.data


FAMILIES = pytest.mark.parametrize("method,level", [("cbsn", False), ("sdap", False), ("cbsn", True)],
                                   ids=["cbsn", "sdap", "cbsn-level"])


@FAMILIES
def test_tiled_equals_untiled_and_odd_sizes(user_data, monkeypatch, method, level):
    _register_tiny("tiny", method, level=level)
    x = _noisy(77, 93)  # odd: SDAP needs even sizes and the student multiples of 8
    told = {"noise_scale": 1.5} if level else {}
    for network in (1, 2, 3):
        whole = _run(method, "tiny", x, network=network, **told)
        monkeypatch.setenv("QUIETLENS_TILE_BUDGET_MB", "3" if network == 1 else "1")  # forces many small tiles
        messages: list[str] = []
        tiled = _run(method, "tiny", x, messages, network=network, **told)
        monkeypatch.delenv("QUIETLENS_TILE_BUDGET_MB")
        assert any(m.startswith("tile 4/") for m in messages), messages
        assert whole.shape == x.shape
        np.testing.assert_allclose(tiled, whole, atol=2e-5)


def test_strength_and_region_maps(user_data):
    _register_tiny("tiny", "cbsn")
    x = _noisy(32, 40)
    method = get("cbsn").with_model("tiny")
    image = Image(x, "photo", "HWC", "png")
    full = pipeline.denoise(image, method, {"network": 1}, provider="cpu").image.data
    assert np.array_equal(pipeline.denoise(image, method, {"strength": 0, "network": 1}, provider="cpu").image.data, x)
    mask = np.zeros((32, 40), bool)
    mask[:, :20] = True
    regions = pipeline.region_maps(image, mask, {"strength": 0.0})
    out = pipeline.denoise(image, method, {"network": 1}, regions, provider="cpu").image.data
    assert np.array_equal(out[:, :20], x[:, :20]) and np.allclose(out[:, 20:], full[:, 20:])
    # slider moves reuse the network result
    state = method.prepare(image, lambda *a: None, CancelToken(), "cpu")
    for passes in (1, 2):
        method.run(image, state, {"strength": 1.0, "network": 2, "passes": passes}, None, lambda *a: None,
                   CancelToken())
    method.run(image, state, {"strength": 0.5, "network": 2, "passes": 2}, None, lambda *a: None, CancelToken())
    assert list(state.results) == [("tiny.student", x.shape, 1, None), ("tiny.student", x.shape, 2, None)]
    assert state.model_sha256 and state.passes == 2


@FAMILIES
def test_preview_crop_equals_the_export(user_data, method, level):
    """A preview (a crop of whole tiles plus context, prepared on the whole photo) shows exactly the pixels
    the export will have, standardised with the whole photo's statistics, not the crop's (and, for a
    student told the noise level, told the whole photo's level)."""
    from quietlens.engine import viewmath

    _register_tiny("tiny", method, level=level)
    x = _noisy(560, 600)
    x[:, 300:] *= 0.5  # the crop's statistics differ from the whole photo's
    image = Image(x, "photo", "HWC", "png")
    m = get(method).with_model("tiny")
    for network, passes in ((1, 1), (2, 1), (2, 2)):
        params = {"network": network, "passes": passes}
        export = pipeline.denoise(image, m, params, provider="cpu").image.data
        halo, align = m.preview_context  # as the processing session asks for it
        (y0, x0, y1, x1), (cy0, cx0, cy1, cx1) = viewmath.preview_boxes((560, 600), (300, 300, 340, 360),
                                                                        halo=halo, align=align)
        assert (cy0, cx0) != (0, 0)
        crop = Image(x[cy0:cy1, cx0:cx1].copy(), "photo", "HWC", "png")
        core = np.s_[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
        res = pipeline.denoise(crop, m, params, provider="cpu", prepare_on=image)
        np.testing.assert_allclose(res.image.data[core], export[y0:y1, x0:x1], atol=2e-5)
        np.testing.assert_allclose(res.state.mean, x.mean(axis=(0, 1), dtype=np.float64))  # not the crop's
        assert np.abs(crop.data.mean(axis=(0, 1)) - x.mean(axis=(0, 1))).max() > 0.01


def test_noise_scale_tells_the_student_more_noise_per_region(user_data):
    """`noise_scale` multiplies the level the student is told: a region map of it is a per-pixel level
    (a constant map of c is the slider at c), each value is a result of its own in the cache, and graphs
    that are not told the level ignore it."""
    _register_tiny("tiny", "cbsn", level=True)
    x = _noisy(48, 64)
    image = Image(x, "photo", "HWC", "png")
    m = get("cbsn").with_model("tiny")
    state = m.prepare(image, lambda *a: None, CancelToken(), "cpu")
    run = lambda params, regions=None: m.run(image, state, {"network": 2, "guard": 1, **params}, regions,  # noqa: E731
                                             lambda *a: None, CancelToken()).data
    one, two = run({}), run({"noise_scale": 2.0})
    assert np.abs(two - one).max() > 1e-3
    mapped = run({}, {"noise_scale": np.full(x.shape[:2], 2.0, np.float32)})
    np.testing.assert_allclose(mapped, two, atol=1e-5)
    assert len(state.results) == 3 and "tiny.student" in str(list(state.results))
    assert set(m.noise_level(state)) == {"photo-level"}
    teacher = [run({"network": 1, "noise_scale": s}) for s in (1.0, 2.0)]
    assert np.array_equal(*teacher)


def test_network_choice_follows_the_provider(user_data):
    _register_tiny("tiny", "sdap")
    image = Image(_noisy(24, 24), "photo", "HWC", "png")
    method = get("sdap").with_model("tiny")
    state = method.prepare(image, lambda *a: None, CancelToken(), "cpu")
    method.run(image, state, {"strength": 1.0, "network": 0}, None, lambda *a: None, CancelToken())
    assert state.model == "tiny.student"  # CPU: the fast student


def test_grayscale_photos_are_replicated_and_averaged_back(user_data):
    _register_tiny("tiny", "cbsn")
    out = _run("cbsn", "tiny", _noisy(24, 30, channels=1), network=1)
    assert out.shape == (24, 30, 1) and np.isfinite(out).all()


def test_channel_statistics_match_float64_numpy_on_a_real_photo():
    """The standardisation's statistics (one OpenCV pass) are numpy's float64 mean and std per channel,
    also on a crop view, a gray photo (three equal channels) and 16-bit values; a flat photo gets the floor."""
    from skimage import data

    from quietlens.engine.image import STD_FLOOR, channel_stats

    photo = data.astronaut().astype(np.float32) / 255
    for x in (photo, photo[40:300, 17:401], photo[..., :1], photo * 65535):
        mean, std = channel_stats(x)
        want_mean = np.resize(x.mean(axis=(0, 1), dtype=np.float64), 3)
        want_std = np.resize(x.std(axis=(0, 1), dtype=np.float64), 3)
        assert mean.shape == std.shape == (3,)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-9)
        np.testing.assert_allclose(std, want_std, rtol=1e-6)
    assert (channel_stats(np.full((20, 30, 3), 0.4, np.float32))[1] == STD_FLOOR).all()


def test_bad_images_and_models(user_data):
    _register_tiny("tiny", "cbsn")
    with pytest.raises(InvalidImageError, match="at least 8"):
        _run("cbsn", "tiny", _noisy(5, 40))
    with pytest.raises(InvalidImageError, match="photo"):
        pipeline.denoise(Image(_noisy(16, 16)[..., 0], "raw", "HW", "raw"), get("cbsn").with_model("tiny"))
    with pytest.raises(ModelError, match="no model named"):
        get("cbsn").with_model("nothing")
    with pytest.raises(ModelError, match="made for cbsn"):
        _run("sdap", "tiny", _noisy(16, 16), network=1)


# -- training ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["cbsn", "sdap"])
def test_interrupted_training_resumes_to_the_same_weights(tmp_path, method):
    images = [_noisy(40, 50, seed=i) for i in range(2)]
    corpus = recipe.Corpus(clean=[], noisy=images)
    config = _tiny_config(method)
    straight, _ = recipe.train_teacher(config, corpus)
    token = CancelToken()

    def stop_after_three(fraction, message):
        if fraction >= 3 / config.train.steps:
            token.cancel()

    ckpt = tmp_path / "teacher.pt"
    with pytest.raises(Cancelled):
        recipe.train_teacher(config, corpus, checkpoint=ckpt, progress=stop_after_three, cancel=token)
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    resumed, info = recipe.train_teacher(config, corpus, checkpoint=ckpt)
    assert info["steps"] == config.train.steps
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    with pytest.raises(QuietLensError, match="other settings"):
        recipe.train_teacher(dataclasses.replace(config, train=dataclasses.replace(config.train, lr=1.0)), corpus,
                             checkpoint=ckpt)


def test_the_pair_bank_keeps_each_pair_s_noise_level():
    """The GPU profile's pre-rendered pairs carry the synthesis' per-pixel noise level as a third array (a
    level student is told it): the bank holds exactly what `srgb_pair` rendered (8-bit noisy, float16
    clean and level), and sampled crops keep the three aligned."""
    from quietlens.models import synth

    corpus = recipe.Corpus(clean=[synth.skimage_photo("astronaut")], noisy=[])
    bank = recipe.PairBank.render(corpus, 3, 96, (3200.0, 25600.0), seed=0)
    rng = recipe._rng(0, "bank", 0)  # how the bank renders its first chunk
    for i in range(3):
        noisy, clean, level = synth.srgb_pair(recipe._float(recipe._crop(corpus.clean, rng, 96)[1]), rng,
                                              iso_range=(3200.0, 25600.0))
        assert np.array_equal(bank.noisy[i], np.round(noisy * 255).astype(np.uint8))
        assert np.array_equal(bank.clean[i], clean.astype(np.float16))
        assert np.array_equal(bank.level[i], level.astype(np.float16)) and level.min() > 0
    n, c, lv = bank.sample(np.random.default_rng(1), 64)
    rng = np.random.default_rng(1)  # the same draws: which pair, then the crop
    i = int(rng.integers(3))
    stored = np.concatenate([bank.noisy[i] / 255, bank.clean[i], bank.level[i]], axis=2).astype(np.float32)
    np.testing.assert_allclose(np.concatenate([n, c, lv], axis=2), recipe._crop([stored], rng, 64)[1], atol=1e-6)


def test_mismatched_levels_are_told_s_times_and_taught_to_remove_more_the_more_they_are_told():
    """`StudentPlan.mismatch`: a level student's supervised crops told `s` times their level (as
    `noise_scale` scales what the engine tells it) learn a target that removes more the larger `s` is:
    below 1 a `1 − s²` share of the noise stays, above 1 the clean image loses the detail the extra noise
    would bury. The crops not drawn keep their level and target; a plan that is not told the level, or a
    range that leaves out 1, is refused."""
    from quietlens.models import synth

    corpus = recipe.Corpus(clean=[synth.skimage_photo("astronaut")], noisy=[])
    x, y = recipe.synthetic_pairs(corpus, np.random.default_rng(0), 8, 64, (3200.0, 25600.0), level=True)
    x0, y0 = x.copy(), y.copy()
    scale = recipe.mismatched((x, y), np.random.default_rng(1), (0.5, 0.5, 3.0))
    assert np.sum(scale != 1) >= 2 and np.all((scale >= 0.5) & (scale <= 3.0))
    for i, s in enumerate(scale):
        np.testing.assert_allclose(x[i, 3:], s * x0[i, 3:], rtol=1e-6)
        np.testing.assert_array_equal(x[i, :3], x0[i, :3])
        if s == 1:
            np.testing.assert_array_equal(y[i], y0[i])
    noisy, clean = x0[0, :3], y0[0]
    variance = (x0[0, 3:] ** 2).mean(axis=(1, 2))[:, None, None]
    removed = [float(np.abs(noisy - synth.told_target(noisy, clean, variance, s)).mean()) for s in (0.25, 0.5, 1, 2, 3)]
    assert all(a < b for a, b in zip(removed, removed[1:])), removed
    np.testing.assert_allclose(synth.told_target(noisy, clean, variance, 0.5) - clean, 0.75 * (noisy - clean), atol=1e-6)

    plan = _tiny_config("cbsn", level=True).students[0]
    with pytest.raises(QuietLensError, match="mismatch"):
        _tiny_config("cbsn", students=(dataclasses.replace(plan, arch={**plan.arch, "level": 0}, tune=None,
                                                           mismatch=(0.5, 0.5, 3.0)),))
    with pytest.raises(QuietLensError, match="mismatch"):
        _tiny_config("cbsn", level=True, students=(dataclasses.replace(plan, mismatch=(0.5, 1.2, 3.0)),))
    told = _tiny_config("cbsn", level=True, students=(dataclasses.replace(plan, mismatch=[0.5, 0.5, 3]),))
    assert recipe.PhotoConfig.from_dict(told.to_dict()) == told and told.students[0].mismatch == (0.5, 0.5, 3.0)


def _photo_folder(folder, count=2, size=(64, 72)):
    from quietlens.engine import io

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        io.save(Image(_noisy(*size, seed=i), "photo", "HWC", "png"), folder / f"noisy{i}.png")
    return folder


def test_adaptation_registers_a_loadable_model(user_data, tmp_path, monkeypatch):
    from quietlens.engine import io
    from quietlens.engine.cli import main
    from quietlens.engine.train import train_model

    _register_tiny("tinybase", "sdap")
    data = _photo_folder(tmp_path / "mine")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with monkeypatch.context() as m:  # the base's architecture records its receptive field: not measured again
        m.setattr(bsn, "receptive_radius", lambda *a, **k: pytest.fail("measured a known receptive field"))
        entries = train_model("sdap", data, base="tinybase", steps=2, name="mycam")
    assert [e.id for e in entries] == ["mycam", "mycam.student", "mycam.fast"]
    assert [e.receptive_field for e in entries] == [catalogue.entry(i).receptive_field
                                                    for i in ("tinybase", "tinybase.student", "tinybase.fast")]
    assert all(e.path.parent == user_data / "models" for e in entries)
    assert entries[0].provenance["data"]["images"] == 2 and "broken.png" in entries[0].provenance["data"]["skipped"][0]
    assert not (user_data / "training" / "mycam").exists()  # checkpoints are cleaned up
    out = _run("sdap", "mycam", _noisy(40, 40), network=1)
    assert np.isfinite(out).all()
    # the same through the CLI, then denoise with --model
    assert main(["train", "sdap", "--data", str(data), "--from", "tinybase", "--steps", "1", "--name", "cli", "-q"]) == 0
    src = data / "noisy0.png"
    assert main(["denoise", str(src), "-o", str(tmp_path / "out.png"), "--method", "sdap", "--model", "cli",
                 "--provider", "cpu", "-q"]) == 0
    assert main(["denoise", str(src), "-o", str(tmp_path / "out2.png"), "--method", "sdap", "--model", "none",
                 "-q"]) == 2
    # and a whole folder with it: the same pixels as the single file, the model named in the report
    (data / "broken.png").unlink()
    assert main(["batch", str(data), "-o", str(tmp_path / "batch"), "--method", "sdap", "--model", "cli",
                 "--provider", "cpu", "-q"]) == 0
    report = json.loads((tmp_path / "batch" / "quietlens-report.json").read_text())
    assert report["model"] == "cli" and report["counts"]["done"] == 2
    batch_out = io.load(tmp_path / "batch" / "noisy0.png").data
    np.testing.assert_array_equal(batch_out, io.load(tmp_path / "out.png").data)
    assert main(["batch", str(data), "-o", str(tmp_path / "batch2"), "--method", "sdap", "--model", "none",
                 "-q"]) == 2 and not (tmp_path / "batch2" / "noisy0.png").exists()


def test_adapting_a_family_whose_student_is_told_the_level(user_data, tmp_path):
    """A student told the noise level is adapted like the others (distilled again, told the installed
    level network's estimate of each photo) and stays one: its graph takes the level planes."""
    from quietlens.engine.train import train_model

    _register_tiny("tinylevel", "cbsn", level=True)
    entries = train_model("cbsn", _photo_folder(tmp_path / "mine"), base="tinylevel", steps=2, name="mycam")
    student = next(e for e in entries if e.id == "mycam.student")
    assert student.provenance["inference"]["level_model"] == recipe.LEVEL_ID
    assert student.inputs[0]["shape"][1] == 6 and student.provenance["architecture"]["level"] == 1
    assert _run("cbsn", "mycam", _noisy(40, 48), network=2, noise_scale=2.0).shape == (40, 48, 3)


def test_a_time_budget_gives_the_students_what_the_teacher_left(user_data, tmp_path, monkeypatch):
    """`--minutes`: a teacher step's timing is the least sure, so the students' steps are counted when the
    teacher is done, from the time left. A teacher timed far too slow (one step planned) leaves the
    students more steps than the share planned up front would give them."""
    from quietlens.engine.train import train_model

    _register_tiny("tinybase", "cbsn")
    estimate = {"teacher": 1000.0, "student": 1.0, "fast": 1.0}  # s per step, as if timed on a busy machine
    monkeypatch.setattr(recipe, "step_seconds", lambda cfg, device="cpu": dict(estimate))
    entries = train_model("cbsn", _photo_folder(tmp_path / "mine"), base="tinybase", minutes=1, name="timed")
    steps = {e.id: e.provenance["training"]["steps"] for e in entries}
    up_front = int(recipe.STUDENT_SHARE * 60 / 2 / estimate["student"])  # the planned share, before fixed costs
    assert steps["timed"] == 1 and steps["timed.student"] > up_front and steps["timed.fast"] > up_front, steps


def test_training_folder_problems(user_data, tmp_path):
    from quietlens.engine.train import train_model

    _register_tiny("tinybase", "cbsn")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (bad / "notes.txt").write_text("hello")
    with pytest.raises(QuietLensError, match="no usable noisy photos"):
        train_model("cbsn", bad, base="tinybase", steps=1)
    with pytest.raises(QuietLensError, match="folder"):
        train_model("cbsn", tmp_path / "missing", base="tinybase", steps=1)
    small = _photo_folder(tmp_path / "small", size=(20, 20))
    with pytest.raises(QuietLensError, match="smaller than"):
        train_model("cbsn", small, base="tinybase", steps=1)
    good = _photo_folder(tmp_path / "good", count=1)
    with pytest.raises(ModelError, match="not sdap|sdap model"):
        train_model("sdap", good, base="tinybase", steps=1)
    with pytest.raises(QuietLensError, match="either minutes or steps"):
        train_model("cbsn", good, base="tinybase", steps=1, minutes=1)
    # a budget the fixed costs (timing, the teacher's outputs) would use up is refused, nothing registered
    with pytest.raises(QuietLensError, match=r"too few for 1 photo.*give at least 1 minute "):
        train_model("cbsn", good, base="tinybase", minutes=0.001, name="hurried")
    assert "hurried" not in catalogue.load()
    with pytest.raises(QuietLensError, match="CUDA"):
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        train_model("cbsn", good, base="tinybase", steps=1, device="cuda")


@pytest.mark.parametrize("method", ["cbsn", "sdap"])
@pytest.mark.parametrize("passes", [1, 2])
def test_shipped_student_preview_equals_export_on_a_real_photo(srgb_pairs, method, passes):
    """The GUI's preview path (whole tiles plus the method's own context, prepared on the whole photo)
    gives the export's pixels on a real 512² Canon photo with the shipped student."""
    from quietlens.engine import io, viewmath

    path = next(noisy for noisy, _ in srgb_pairs if noisy.name.startswith("5dmark3"))
    image = io.load(path)
    m = get(method)
    export = pipeline.denoise(image, m, {"network": 2, "passes": passes}, provider="cpu").image.data
    halo, align = m.preview_context
    (y0, x0, y1, x1), (cy0, cx0, cy1, cx1) = viewmath.preview_boxes(
        image.data.shape[:2], (300, 300, 400, 420), halo=max(viewmath.PREVIEW_HALO, halo), align=align)
    assert (y0, x0) == (256, 256) and halo > viewmath.PREVIEW_HALO and align == 8 and cy0 % 8 == 0
    crop = image.with_data(image.data[cy0:cy1, cx0:cx1].copy())
    preview = pipeline.denoise(crop, m, {"network": 2, "passes": passes}, provider="cpu",
                               prepare_on=image).image.data
    np.testing.assert_allclose(preview[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0], export[y0:y1, x0:x1], atol=1e-5)


@pytest.mark.parametrize("method", ["cbsn", "sdap"])
def test_colours_and_local_brightness_follow_the_input(srgb_pairs, method):
    """Noise is zero-mean, so denoising must not move a real photo's local means: the output's coarse band
    (a wide blur) matches the input's within a fraction of a grey level, for teacher and student alike."""
    import cv2

    from quietlens.engine import io

    coarse = lambda a: cv2.GaussianBlur(a, (0, 0), 24)  # noqa: E731
    for prefix in ("5dmark3", "sidd"):  # low noise (Canon ISO 3200) and heavy noise (a phone)
        image = io.load(next(noisy for noisy, _ in srgb_pairs if noisy.name.startswith(prefix)))
        for network in (1, 2):
            out = pipeline.denoise(image, get(method), {"network": network}, provider="cpu").image.data
            drift = np.abs(coarse(out) - coarse(image.data))[48:-48, 48:-48]
            assert drift.max() < 2 / 255 and drift.mean() < 0.3 / 255, (prefix, network, drift.max() * 255,
                                                                         drift.mean() * 255)
            if prefix == "sidd":
                assert np.abs(out - image.data).mean() > 1 / 255  # and it did denoise


def test_distillation_targets_are_what_the_engine_makes_of_the_teacher(srgb_pairs):
    """With ``targets="engine"`` a student distils to the teacher as a user gets it: on a real Canon photo
    the targets equal the pipeline's teacher result (low band, display range and detail guard included), and
    they are closer to the clean reference than the teacher network's raw output (SDAP's teacher, a
    smoother of low noise, gains most)."""
    from quietlens.engine import io

    band = recipe.PhotoConfig.lowpass_sigma
    noisy_path, clean_path = next(p for p in srgb_pairs if p[0].name.startswith("5dmark3"))
    x, clean = (io.load(p).data[:256, :256] for p in (noisy_path, clean_path))
    for family in ("cbsn", "sdap"):
        entry = catalogue.entry(family)
        teacher = recipe.GraphTeacher(entry.path, entry.receptive_field, entry.tile_multiple, threads=1)
        raw, finished = (recipe.teacher_outputs(teacher, [x], space="srgb", band_sigma=b)[0][3:].transpose(1, 2, 0)
                         for b in (None, band))
        engine = pipeline.denoise(Image(x, "photo", "HWC", "png"), get(family), {"network": 1}, provider="cpu")
        np.testing.assert_allclose(finished, engine.image.data, atol=1e-5)
        standardised = recipe.teacher_outputs(teacher, [x], band_sigma=band)[0]
        _, mu, sd = recipe.standardise_image(x)
        np.testing.assert_allclose(standardised[3:].transpose(1, 2, 0) * sd + mu, finished, atol=1e-4)
        gain = recipe.scores(clean, finished)[0] - recipe.scores(clean, raw)[0]
        assert gain > (1.0 if family == "sdap" else 0.3), (family, gain)


def test_a_teacher_s_graph_gives_the_distillation_targets_its_network_gives():
    """On a CPU `recipe.run` takes the targets from the trained teacher's exported graph (ONNX Runtime, as
    the engine runs it, 3× faster than PyTorch for SDAP's teacher): the same targets, on a real photo."""
    from quietlens.models.synth import skimage_photo

    photo = skimage_photo("astronaut")[:200, :232]
    for wrap in (CBSNInference, SDAPInference):
        teacher = wrap(DBSN(BSNConfig(width=12, modules=1)).init_neighbour_mean())
        graph = recipe.GraphTeacher(bsn.export_checked(teacher), teacher.radius, teacher.multiple, threads=1,
                                    bytes_per_pixel=bsn.bytes_per_pixel(teacher))
        ours, theirs = (recipe.teacher_outputs(t, [photo], space="srgb")[0] for t in (graph, teacher))
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("method", ["cbsn", "sdap"])
def test_adaptation_lowers_the_self_supervised_loss_on_real_photos(shared_data, user_data, tmp_path, method):
    """`quietlens train` on a tiny folder of real noisy photos (no references) lowers the method's own
    self-supervised loss on them: what adaptation is for."""
    from quietlens.engine import io
    from quietlens.engine.train import train_model
    from quietlens.models import synth

    folder = tmp_path / "real"
    folder.mkdir()
    photos = [im[:80, :80] for name, im in synth.real_noisy() if "dnd_patches" in name][:3]
    for i, im in enumerate(photos):
        io.save(Image(np.ascontiguousarray(im), "photo", "HWC", "png"), folder / f"{i}.png")
    small = BSNConfig(width=12, modules=1)
    # a working blind denoiser (neighbour mean) adapted by the self-supervised loss alone
    # (crops as large as the photos: tiny crops standardised on their own are not like the whole photos)
    _register_tiny("tinybase", method, net=small, supervised=0.0, train=recipe.Phase(6, 2, 80, 1e-3))

    def selfsup(model_id: str) -> float:
        entry = catalogue.load()[model_id]
        net = bsn.load_weights_from_onnx({"cbsn": CBSNInference, "sdap": SDAPInference}[method](DBSN(small)),
                                                entry.path.read_bytes()).net
        z = torch.from_numpy(np.stack([recipe._standardise(im[:80, :80]) for im in photos]))
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            loss = cbsn_loss(net, z, 1.0, gen)[0] if method == "cbsn" else sdap_loss(net, z, gen)[0]
        return float(loss)

    train_model(method, folder, base="tinybase", steps=40, name="adapted")
    before, after = selfsup("tinybase"), selfsup("adapted")
    assert after < 0.97 * before, (before, after)


def test_students_take_a_second_pass_on_heavy_real_noise_only(shared_data, user_data):
    """`passes=auto`: on the SIDD phone photos (heavy, correlated noise, of which one pass of the student
    removes only part) the C-BSN student runs twice and gains over one pass on every photo; on the Canon
    ISO 3200 photos (light noise: a second pass would take detail) it runs once."""
    from quietlens.engine.progress import no_progress
    from quietlens.models import synth

    m = get("cbsn")
    pairs = synth.dev_pairs()
    for name, rows in pairs.items():
        for _, noisy, clean in rows:
            image = Image(noisy, "photo", "HWC", "png")
            state = m.prepare(image, no_progress, CancelToken(), "cpu")
            auto = m.run(image, state, {"network": 2}, None, no_progress, CancelToken()).data
            assert state.passes == (2 if name == "sidd" else 1), (name, state.noise_energy)
            if name == "sidd":
                one = m.run(image, state, {"network": 2, "passes": 1}, None, no_progress, CancelToken()).data
                assert recipe.scores(clean, auto)[0] > recipe.scores(clean, one)[0] + 0.3


@pytest.mark.parametrize("method", ["cbsn", "sdap"])
def test_shipped_photo_graphs_keep_their_recorded_quality_on_the_dev_pairs(shared_data, user_data, method):
    """The quality floor: every shipped graph of the family, run through the engine on the real dev pairs
    (SIDD, Canon), stays within 0.3 dB of the PSNR its manifest entry records (measured by the shipping
    command through `quietlens batch`), and where the record says no image fell below its noisy input,
    none does now."""
    from photo_eval import engine_outputs

    from quietlens.models import synth

    pairs = synth.dev_pairs()
    noisy_psnr = {name: [recipe.scores(clean, noisy)[0] for _, noisy, clean in rows] for name, rows in pairs.items()}
    shipped = catalogue.read(catalogue.packaged_manifest_path())
    for role in catalogue.ROLES:
        entry = shipped[catalogue.graph_id(method, role)]
        recorded = entry.provenance.get("metrics", {})
        assert {"sidd", "cc"} <= set(recorded), f"{entry.id}: shipped without dev-pair metrics"
        for name, rows in pairs.items():
            outs = engine_outputs(method, method, role, [noisy for _, noisy, _ in rows])
            psnr = [recipe.scores(clean, out)[0] for (_, _, clean), out in zip(rows, outs)]
            gains = [p - q for p, q in zip(psnr, noisy_psnr[name])]
            assert np.mean(psnr) > recorded[name]["psnr"] - 0.3, (entry.id, name, np.mean(psnr), recorded[name])
            if recorded[name]["worst_gain_db"] >= 0:
                assert min(gains) >= 0, (entry.id, name, gains)


def test_the_shipped_student_is_told_the_noise_level_and_follows_noise_scale(shared_data, srgb_pairs):
    """The level network reads known noise: white Gaussian noise of σ 10–40 grey levels added to a clean
    photo reads within 30 % (below that, a photo's own fine texture reads as a few grey levels), more
    noise reading more. And `noise_scale` is the knob it sets: on a real Canon photo every shipped student
    (C-BSN's and SDAP's, student and fast) removes more the more noise it is told (0.5, 1, 2), through the
    engine's whole path."""
    from quietlens.engine import io
    from quietlens.engine.progress import no_progress

    m = get("cbsn")
    clean = io.load(shared_data / "clean" / "kodak24" / "kodim03.png").data
    read = []
    for sigma in (10, 20, 40):
        noisy = (clean + np.random.default_rng(sigma).normal(0, sigma / 255, clean.shape)).astype(np.float32)
        image = Image(noisy, "photo", "HWC", "png")
        state = m.prepare(image, no_progress, CancelToken(), "cpu")
        m.run(image, state, {"network": 2}, None, no_progress, CancelToken())
        read.append(float(np.mean(m.noise_level(state)["photo-level"])) * 255)
        assert abs(read[-1] / sigma - 1) < 0.3, (sigma, read)
    assert read == sorted(read)

    image = io.load(next(noisy for noisy, _ in srgb_pairs if noisy.name.startswith("5dmark3")))
    image = image.with_data(np.ascontiguousarray(image.data[:384, :384]))
    for method in ("sdap", "cbsn"):  # both families' students, and the fast ones (previews, batches)
        m = get(method)
        state = m.prepare(image, no_progress, CancelToken(), "cpu")
        for network in (2, 3):
            removed = [float(np.std(image.data - m.run(image, state, {"network": network, "noise_scale": s}, None,
                                                       no_progress, CancelToken()).data)) for s in (0.5, 1.0, 2.0)]
            assert removed[0] < removed[1] < removed[2], (method, network, removed)
    model = m.noise_model(state)  # the noise panel: one σ per channel whatever the brightness
    assert model.K == 0 and model.sigma == pytest.approx(float(np.mean(m.noise_level(state)["photo-level"])))


def test_the_shipped_student_averages_flat_surfaces_out():
    """First principles: flat colour squares under white Gaussian noise of known σ (5, 15, 30 grey levels)
    through the CPU default, whole and through the engine: inside each square (12 px from its edges) at
    most a small share of the noise variance is left (BM3D leaves 0.2–0.3 %; the student distilled
    without mismatched levels left 38 / 12 / 3.6 %)."""
    scene = np.zeros((512, 512, 3), np.float32)
    colours = [(0.2, 0.3, 0.5), (0.8, 0.6, 0.4), (0.5, 0.5, 0.5), (0.1, 0.7, 0.2)]
    for k, colour in enumerate(colours):
        y, x = divmod(k, 2)
        scene[y * 256:(y + 1) * 256, x * 256:(x + 1) * 256] = colour
    inside = [(slice(y * 256 + 12, (y + 1) * 256 - 12), slice(x * 256 + 12, (x + 1) * 256 - 12))
              for y, x in (divmod(k, 2) for k in range(4))]
    rng = np.random.default_rng(0)
    for sigma, most in ((5, 0.25), (15, 0.06), (30, 0.035)):
        noisy = np.clip(scene + rng.normal(0, sigma / 255, scene.shape), 0, 1).astype(np.float32)
        out = pipeline.denoise(Image(noisy, "photo", "HWC", "png"), get("cbsn"), {}, provider="cpu").image.data
        left = np.mean([np.mean((out[s] - scene[s]) ** 2) / np.mean((noisy[s] - scene[s]) ** 2) for s in inside])
        assert left < most, (sigma, left)


def test_auto_network_picks_the_teacher_on_cuda_only_where_it_measured_better(monkeypatch):
    """`network=auto`: the student on a CPU; on CUDA the teacher, unless the manifests measured it below the
    student on any set both were measured on (real pairs, or clean photos it smooths); without dev-pair
    metrics the teacher."""
    def entries(teacher: tuple | None, student: tuple | None) -> dict:
        def entry(model_id, psnr):  # psnr: (real pairs, clean photos)
            metrics = ({**{k: {"psnr": psnr[0]} for k in ("sidd", "cc")}, "kodak24 clean": {"psnr": psnr[1]}}
                       if psnr is not None else {})
            return catalogue.ModelEntry(model_id, f"{model_id}.onnx", "0" * 64, "cbsn", "photo",
                                        provenance={"metrics": metrics})
        return {"cbsn": entry("cbsn", teacher), "cbsn.student": entry("cbsn.student", student)}

    method = get("cbsn")
    for (teacher, student), cuda in [(((33.0, 50.0), (34.0, 50.0)), "student"),
                                     (((34.0, 50.0), (33.0, 50.0)), "teacher"),
                                     (((34.0, 37.0), (33.0, 50.0)), "student"),  # better on noise, smooths clean photos
                                     ((None, (34.0, 50.0)), "teacher"), (((33.0, 50.0), None), "teacher")]:
        monkeypatch.setattr(catalogue, "load", lambda e=entries(teacher, student): e)
        assert method._auto_role("cuda") == cuda and method._auto_role("cpu") == "student"


@pytest.mark.parametrize("method", ["cbsn", "sdap"])
def test_the_default_network_passes_clean_photos_through(shared_data, method):
    """Never worse than the input: clean Kodak photos (evaluation data, never trained on) come back
    essentially unchanged from the CPU default, whole, through the engine."""
    from quietlens.engine import io

    for name in ("kodim03.png", "kodim19.png"):
        image = io.load(shared_data / "clean" / "kodak24" / name)
        out = pipeline.denoise(image, get(method), {}, provider="cpu").image.data
        assert recipe.scores(image.data, out)[0] > 40.0, name


def test_detail_guard_gives_detail_back_and_samples_a_large_photo(shared_data, monkeypatch):
    """The detail guard: a clean photo (where everything the network removes is detail) comes back much
    closer to itself with it than without; on a photo above the whole-measure size the guard's noise curve,
    measured on a grid of sample tiles, matches the curve of the whole photo, and the progress of measuring
    and denoising is one bar that never goes back."""
    from quietlens.engine import io
    from quietlens.engine.noise.guard import GUARD_SAMPLE_PIXELS, noise_energy_curve
    from quietlens.engine.progress import no_progress

    image = io.load(shared_data / "clean" / "kodak24" / "kodim19.png")
    on, off = (pipeline.denoise(image, get("cbsn"), params, provider="cpu").image.data
               for params in ({}, {"guard": 1}))
    assert recipe.scores(image.data, on)[0] > recipe.scores(image.data, off)[0] + 2.0

    noisy = np.clip(image.data + np.random.default_rng(0).normal(0, 0.03, image.data.shape), 0, 1)
    big = Image(np.pad(noisy, ((0, 600), (0, 600), (0, 0)), mode="symmetric").astype(np.float32), "photo", "HWC", "png")
    assert big.data.shape[0] * big.data.shape[1] > GUARD_SAMPLE_PIXELS
    m = get("cbsn")
    state = m.prepare(big, no_progress, CancelToken())
    level = m._level("cbsn.student", state, 1.0, None, no_progress, CancelToken())  # what the student is told
    sampled, top, _ = m._noise_energy("cbsn.student", state, no_progress, CancelToken(), level=level)
    whole, _ = noise_energy_curve([big.data], [m._denoise(big.data, "cbsn.student", state, no_progress, CancelToken(),
                                                          level=level)], top)
    counts = np.bincount(np.clip((big.data.mean(axis=2) * len(whole)).astype(int), 0, len(whole) - 1).ravel(),
                         minlength=len(whole))
    busy = counts > 0.05 * counts.sum()
    assert busy.sum() >= 2 and np.all(np.abs(np.log(sampled[busy] / whole[busy])) < np.log(1.3)), (sampled, whole)

    reports: list[tuple[float, str]] = []
    monkeypatch.setenv("QUIETLENS_TILE_BUDGET_MB", "64")  # the pass in several tiles, each reported
    pipeline.denoise(big, m, {}, provider="cpu", progress=lambda f, msg="": reports.append((f, msg)))
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # one bar: samples first, then the pass
    assert any(msg.startswith("measuring the noise (sample 16/16)") for _, msg in reports)
    assert any(msg.startswith("tile 2/") for _, msg in reports)


def test_adapting_a_gpu_trained_base_on_a_cpu_uses_cpu_sized_batches():
    """The shipped teachers record the GPU profile's batches (16 × 120², students 64 × 128²): adapting them
    on a CPU with those would buy a handful of steps in minutes, so a CPU gets the cpu profile's batches; on
    CUDA the recorded ones stay. Crops stay the base's (a blind-spot teacher adapted on smaller crops than it
    learnt on loses quality), shrunk to fit the smallest photo. The students distil to the teacher as the
    engine finishes it."""
    from quietlens.models import ship

    base = ship.photo_configs("cbsn")["gpu"]
    base = dataclasses.replace(base, train=ship.photo_configs("cbsn")["gpu-teacher"].train)  # warmed up
    kw = dict(seed=0, teacher_steps=5, student_steps={"student": 3, "fast": 3})
    for side, teacher_crop, student_crop in ((100, 100, 96), (400, 120, 128)):
        photos = [np.zeros((side, 300, 3), np.float32)]
        cpu = recipe.adaptation_config(base, photos, device="cpu", **kw)
        cuda = recipe.adaptation_config(base, photos, device="cuda", **kw)
        assert (cpu.train.batch, cpu.train.crop) == (recipe.CPU_BATCHES["teacher"], teacher_crop)
        assert all((s.distil.batch, s.distil.crop) == (8, student_crop) for s in cpu.students)
        assert (cuda.train.batch, cuda.train.crop) == (16, teacher_crop)
        assert all((s.distil.batch, s.distil.crop) == (64, student_crop) for s in cuda.students)
    assert cpu.train.steps == 5 and cpu.bank == 0 and base.train.warmup and cpu.train.warmup == 0
    assert base.targets == "network" and cpu.targets == cuda.targets == "engine"  # what a user gets from the teacher


def test_the_step_budget_counts_the_synthetic_pairs_a_step_renders():
    """`quietlens train --minutes` turns minutes into steps by what a step costs: its network and loss
    (`step_seconds`) and, rendered in the training process, its synthetic pairs (`batch_seconds`) — for
    C-BSN's teacher (supervised term) and every student with an anchor; nothing where a step renders none."""
    from quietlens.models import ship

    photos = [np.random.default_rng(0).random((200, 200, 3), dtype=np.float32)]
    corpus = recipe.anchor_corpus(photos)
    kw = dict(seed=0, teacher_steps=1, student_steps={"student": 1, "fast": 1})
    cbsn = recipe.adaptation_config(ship.photo_configs("cbsn")["cpu-refine"], photos, **kw)
    made = recipe.batch_seconds(cbsn, corpus, recipe.shipped_level_net())
    assert set(made) == {"teacher", "student", "fast"} and all(v > 0 for v in made.values()), made
    sdap = recipe.adaptation_config(ship.photo_configs("sdap")["cpu"], photos, **kw)
    assert recipe.batch_seconds(sdap, corpus)["teacher"] == 0  # blind only: no pairs
    unanchored = dataclasses.replace(cbsn, students=tuple(dataclasses.replace(s, anchor=0.0) for s in cbsn.students))
    assert recipe.batch_seconds(unanchored, corpus)["student"] == 0
