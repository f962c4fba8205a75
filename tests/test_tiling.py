"""Tiled inference: small real conv nets built in torch, exported to ONNX and run through the runtime.

``TinyNet`` (plain, one dilated layer) and ``ShuffleNet`` (pixel-unshuffle down to 1/4 and back, so its
input must be a multiple of 4) have receptive-field radii known by construction; a test re-measures
them with autograd. With the halo at that radius, tiled output must equal the untiled call.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quietlens.engine import runtime
from quietlens.engine.errors import Cancelled, ModelError, QuietLensError
from quietlens.engine.progress import CancelToken
from quietlens.engine.tiling import plan_tiles, run_tiled, tile_side_for_budget

TINY_RF = 6  # 3×3 convs: 1 + 1 + 2 (dilation 2) + 1 + 1
SHUFFLE_RF = 11  # worst output phase: 3×3 convs at 1/2, 1/4 and 1/2 resolution (see measured_radius)
BPP = 300  # measured peak bytes per padded pixel of TinyNet under ONNX Runtime on the CPU
TOL = 1e-5


class TinyNet(nn.Module):
    """A residual 5-layer 3×3 conv net, 16 channels, radius 6."""

    def __init__(self, channels: int = 3, features: int = 16):
        super().__init__()
        c, f = channels, features
        self.body = nn.Sequential(
            nn.Conv2d(c, f, 3, padding=1), nn.ReLU(),
            nn.Conv2d(f, f, 3, padding=1), nn.ReLU(),
            nn.Conv2d(f, f, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(f, f, 3, padding=1), nn.ReLU(),
            nn.Conv2d(f, c, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


class ShuffleNet(nn.Module):
    """Space-to-depth twice, convs at 1/2 and 1/4 resolution, depth-to-space back: needs multiples of 4."""

    def __init__(self, channels: int = 3, features: int = 8):
        super().__init__()
        c, f = channels, features
        self.down = nn.Conv2d(4 * c, f, 3, padding=1)
        self.mid = nn.Conv2d(4 * f, 4 * f, 3, padding=1)
        self.up = nn.Conv2d(f, 4 * c, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.down(nn.functional.pixel_unshuffle(x, 2)))
        y = torch.relu(self.mid(nn.functional.pixel_unshuffle(y, 2)))
        y = self.up(nn.functional.pixel_shuffle(y, 2))
        return x + nn.functional.pixel_shuffle(y, 2)


def export(net: nn.Module, path: Path) -> Path:
    """ONNX opset 17 with dynamic batch, height and width."""
    dynamic = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(net.eval(), torch.zeros(1, 3, 32, 32), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": dynamic, "y": dynamic},
                          opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("nets")
    tiny, shuffle = TinyNet(), ShuffleNet()
    return {
        "tiny": (tiny, export(tiny, folder / "tiny.onnx")),
        "shuffle": (shuffle, export(shuffle, folder / "shuffle.onnx")),
    }


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).random((1, 3, 157, 203), dtype=np.float32)  # odd, non-square


def untiled(sess, x: np.ndarray, pad: int, multiple_of: int = 1) -> np.ndarray:
    """The reference: pad the whole image by ``pad`` (and up to the multiple), one call, crop."""
    h, w = x.shape[2:]
    extra_h, extra_w = -h % multiple_of, -w % multiple_of
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad + extra_h), (pad, pad + extra_w)), mode="reflect")
    return sess(padded)[:, :, pad:pad + h, pad:pad + w]


def measured_radius(net: nn.Module, size: int = 64) -> int:
    """The farthest input pixel any output pixel depends on (autograd, all phases of a 4×4 block)."""
    radius = 0
    for dy in range(4):
        for dx in range(4):
            x = torch.rand(1, 3, size, size, requires_grad=True)
            cy, cx = size // 2 + dy, size // 2 + dx
            net(x)[0, :, cy, cx].sum().backward()
            ys, xs = np.nonzero(x.grad[0].abs().sum(0).numpy())
            radius = max(radius, np.abs(ys - cy).max(), np.abs(xs - cx).max())
    return int(radius)


def test_receptive_fields_are_as_constructed(nets):
    assert measured_radius(nets["tiny"][0]) == TINY_RF
    assert measured_radius(nets["shuffle"][0]) == SHUFFLE_RF


@pytest.mark.parametrize("name", ["tiny", "shuffle"])
def test_onnx_matches_torch(nets, image, name):
    net, path = nets[name]
    x = image[:, :, :152, :200]  # multiples of 4 for the shuffle net
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    got = runtime.session(path, "cpu")(x)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < TOL


@pytest.mark.parametrize("core", [40, 64, 96])
@pytest.mark.parametrize("multiple_of", [1, 2, 4])
def test_tiled_equals_untiled(nets, image, core, multiple_of):
    sess = runtime.session(nets["tiny"][1], "cpu")
    budget = BPP * (core + 2 * TINY_RF) ** 2
    messages = []
    out = run_tiled(sess, image, halo=TINY_RF, bytes_per_pixel=BPP, budget_bytes=budget,
                    multiple_of=multiple_of, progress=lambda f, m: messages.append((f, m)))
    n = len(messages)
    assert n >= 4 and messages[-1] == (1.0, f"tile {n}/{n}")
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.abs(out - untiled(sess, image, TINY_RF, multiple_of)).max() < TOL


@pytest.mark.parametrize("shape", [(150, 203), (97, 64), (31, 230)])
def test_tiled_equals_untiled_with_downsampling(nets, shape):
    sess = runtime.session(nets["shuffle"][1], "cpu")
    x = np.random.default_rng(2).random((2, 3) + shape, dtype=np.float32)  # batch of 2
    calls = []

    def fn(t):
        assert t.shape[2] % 4 == 0 and t.shape[3] % 4 == 0
        calls.append(t.shape)
        return sess(t)

    out = run_tiled(fn, x, halo=SHUFFLE_RF, bytes_per_pixel=BPP, budget_bytes=BPP * 64**2, multiple_of=4)
    assert len(calls) >= 4 and len(set(calls)) == 1  # every tile has the same shape
    pad = -(-SHUFFLE_RF // 4) * 4  # the halo rounded up to the grid, as run_tiled does
    assert np.abs(out - untiled(sess, x, pad, 4)).max() < TOL


def test_halo_below_receptive_field_differs(nets, image):
    """Proves the equality tests can fail: too little context leaves seams."""
    sess = runtime.session(nets["tiny"][1], "cpu")
    out = run_tiled(sess, image, halo=2, bytes_per_pixel=BPP, budget_bytes=BPP * 64**2)
    assert np.abs(out - untiled(sess, image, TINY_RF)).max() > 1e-3


def test_blend_is_exact_with_enough_halo(nets, image):
    sess = runtime.session(nets["tiny"][1], "cpu")
    out = run_tiled(sess, image, halo=TINY_RF, bytes_per_pixel=BPP, budget_bytes=BPP * 60**2, blend=12)
    assert np.abs(out - untiled(sess, image, TINY_RF)).max() < TOL


def test_blend_weights_are_normalised(image):
    out = run_tiled(lambda t: t * 2, image, halo=0, bytes_per_pixel=4, budget_bytes=4 * 50**2, blend=9,
                    multiple_of=2)
    np.testing.assert_allclose(out, image * 2, rtol=1e-6)


def test_whole_image_that_fits_is_one_call(image):
    calls = []
    run_tiled(lambda t: calls.append(t.shape) or t, image, halo=6, bytes_per_pixel=4, budget_bytes=2**30)
    assert calls == [(1, 3, 157 + 12, 203 + 12)]


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge"])
def test_padding_matches_numpy_even_beyond_the_image(mode):
    x = np.arange(15, dtype=np.float32).reshape(1, 1, 3, 5)
    seen = []
    run_tiled(lambda t: seen.append(t) or t, x, halo=7, bytes_per_pixel=4, budget_bytes=2**20, pad_mode=mode)
    np.testing.assert_array_equal(seen[0], np.pad(x, ((0, 0), (0, 0), (7, 7), (7, 7)), mode=mode))


def test_strip_images_use_long_tiles():
    x = np.zeros((1, 1, 20, 5000), np.float32)
    calls = []
    run_tiled(lambda t: calls.append(t.shape) or t, x, halo=4, bytes_per_pixel=4, budget_bytes=4 * 200**2)
    assert len(calls) == 4 and all(s[2] == 28 and s[3] * 28 * 4 <= 4 * 200**2 for s in calls)


@pytest.mark.parametrize("h, w, core, halo, m, blend", [
    (157, 203, 40, 6, 1, 0), (157, 203, 40, 6, 4, 0), (157, 203, 48, 5, 4, 8),
    (3, 5, 64, 7, 2, 0), (1000, 17, 64, 3, 8, 16), (64, 64, 64, 0, 1, 0),
])
def test_plan_covers_the_image_on_the_grid(h, w, core, halo, m, blend):
    tiles = plan_tiles(h, w, core, halo, m, blend)
    covered = np.zeros((h, w), int)
    for t in tiles:
        assert t.y % m == t.x % m == t.pad % m == 0
        assert (t.h + 2 * t.pad) % m == (t.w + 2 * t.pad) % m == 0
        assert t.pad >= halo and t.y < h and t.x < w
        covered[t.y:t.y + t.h, t.x:t.x + t.w] += 1
    assert len({(t.h, t.w) for t in tiles}) == 1
    assert covered.min() >= 1


def test_tile_side_follows_the_budget():
    assert tile_side_for_budget(4 * 100**2, 4, 10, 1) == 80
    assert tile_side_for_budget(4 * 100**2, 4, 10, 16) == 64
    assert tile_side_for_budget(4 * 101**2, 4, 10, 1) == 81
    with pytest.raises(QuietLensError, match=r"budget of 0\.5 MiB .* smallest tile needs 2 MiB"):
        tile_side_for_budget(2**19, 4, 252, 8)  # (8 + 2·256)² px · 4 B = 1.06 MiB, rounded up


def test_too_small_budget_or_bad_grid_is_refused(image):
    with pytest.raises(QuietLensError, match="smallest tile needs 1 MiB"):
        run_tiled(lambda t: t, image, halo=TINY_RF, bytes_per_pixel=BPP, budget_bytes=BPP * 12**2)
    with pytest.raises(QuietLensError, match="multiple_of >= 1"):
        run_tiled(lambda t: t, image, halo=TINY_RF, bytes_per_pixel=BPP, multiple_of=0)


def test_env_budget(monkeypatch, image):
    counts = {}
    for mb in ("0.05", "1"):
        monkeypatch.setenv("QUIETLENS_TILE_BUDGET_MB", mb)
        calls = []
        run_tiled(lambda t: calls.append(1) or t, image, halo=4, bytes_per_pixel=16)
        counts[mb] = len(calls)
    assert counts["0.05"] > 4 and counts["1"] == 1
    monkeypatch.setenv("QUIETLENS_TILE_BUDGET_MB", "lots")
    with pytest.raises(QuietLensError, match="QUIETLENS_TILE_BUDGET_MB"):
        run_tiled(lambda t: t, image, halo=4, bytes_per_pixel=16)


def test_cancel_after_first_tile(image):
    token, calls = CancelToken(), []
    with pytest.raises(Cancelled):
        run_tiled(lambda t: calls.append(1) or t, image, halo=2, bytes_per_pixel=4, budget_bytes=4 * 40**2,
                  progress=lambda f, m: token.cancel(), cancel=token)
    assert len(calls) == 1


def test_wrong_output_size_is_a_model_error(image):
    with pytest.raises(ModelError, match="height and width"):
        run_tiled(lambda t: t[:, :, ::2, ::2], image, halo=2, bytes_per_pixel=4, budget_bytes=2**30)


# The child reads VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss (pytest with torch loaded,
# ~300 MiB) across fork and exec, which would hide the small budget's peak; VmHWM is this process's own.
_PEAK_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
from quietlens.engine import runtime, tiling
path, mib = Path(sys.argv[1]), int(sys.argv[2])
x = np.random.default_rng(0).random((1, 3, 2048, 2048), dtype=np.float32)
sess, shapes = runtime.session(path, "cpu"), []
tiling.run_tiled(lambda t: shapes.append(t.shape[2:]) or sess(t), x, halo=6, bytes_per_pixel=300,
                 budget_bytes=mib * 2**20)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"tiles": len(shapes), "tile_pixels": shapes[0][0] * shapes[0][1], "peak_kib": peak}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_peak_memory_follows_the_budget(nets):
    """A 4 MP image in fresh processes: the small budget must give a clearly smaller peak RSS."""
    runs = {}
    for mib in (64, 512):
        done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(nets["tiny"][1]), str(mib)],
                              capture_output=True, text=True, timeout=120, check=True)
        runs[mib] = json.loads(done.stdout.strip().splitlines()[-1])
    small, large = runs[64], runs[512]
    assert small["tiles"] > large["tiles"] > 1
    # Both hold the same 48 MiB input and output, so the peaks differ by the tiles' working memory.
    expected = BPP * (large["tile_pixels"] - small["tile_pixels"]) / 1024
    assert 0.5 * expected < large["peak_kib"] - small["peak_kib"] < 2 * expected
    assert small["peak_kib"] < 0.6 * large["peak_kib"]
