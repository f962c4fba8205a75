"""The camera simulation (models/synth.py) against real sRGB noise: level vs intensity, correlation.

    .venv/bin/python tests/benchmarks/synth_vs_real.py [--samples 120] [--seed 0]

Real: the noisy − clean residuals of the development pairs (../shared/data/srgb_pairs: SIDD, Canon 5D
Mark III ISO 3200), and flat patches of the real noisy photos without references (real_noisy/; a plane
fitted per channel is the signal). Synthetic: ``srgb_pair`` on crops of the training corpus at random
cameras and ISO, measured the same two ways (the residual against the clean rendering, and the flat
patches of the noisy rendering alone, so the two sides of each comparison are measured alike).

Printed per source: noise standard deviation (/255) per intensity bin and channel, the residual's
autocorrelation at lags 1–3 px and the correlation between colour channels; for the synthetic rows the
10th–90th percentile over samples, with ISO bands for the level.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

from quietlens.models import synth


def fmt_std(std: np.ndarray) -> str:
    return " | ".join("–" if np.isnan(s).all() else "/".join(f"{v:4.1f}" for v in s * 255) for s in std)


def summarise(name: str, stats: list[dict]) -> None:
    with warnings.catch_warnings():  # empty bins and grey photos (no channel correlation) give NaN
        warnings.simplefilter("ignore")
        std = np.nanmean(np.stack([s["std"] for s in stats]), axis=0)
        ac = np.stack([s["autocorr"] for s in stats])
        cc = np.array([s["channel_corr"] for s in stats])
    if len(stats) > 3:
        lo, hi = np.nanpercentile(ac, [10, 90], axis=0)
        acs = " ".join(f"{a:.2f}–{b:.2f}" for a, b in zip(lo, hi))
        ccs = f"{np.nanpercentile(cc, 10):.2f}–{np.nanpercentile(cc, 90):.2f}"
    else:
        acs, ccs = " ".join(f"{a:.2f}" for a in ac.mean(0)), f"{cc.mean():.2f}"
    print(f"| {name} | {len(stats)} | {fmt_std(std)} | {acs} | {ccs} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--luma-nr", type=float, default=0.0,
                    help="share of cameras that smooth luminance (synth.random_isp; off in every shipped recipe)")
    args = ap.parse_args()
    bins = " | ".join(f"σ {lo:.2f}–{min(hi, 1):.2f} R/G/B" for lo, hi in zip(synth.INTENSITY_BINS[:-1],
                                                                            synth.INTENSITY_BINS[1:]))
    print("\n## Residual against the clean reference\n")
    print(f"| source | n | {bins} | autocorr lag 1 2 3 | channel corr |\n|---|---|" + "---|" * 7)
    pairs = synth.dev_pairs()
    for subset, rows in pairs.items():
        summarise(f"real {subset}", [synth.noise_stats(n - c, c) for _, n, c in rows])
        for name, n, c in rows:
            summarise(f"  {name}", [synth.noise_stats(n - c, c)])
    rng = np.random.default_rng(args.seed)
    corpus = [im for im in synth.clean_corpus("train") if min(im.shape[:2]) >= 192]  # two scans are smaller
    bands = {"ISO 50–400": (50, 400), "ISO 400–3200": (400, 3200), "ISO 3200–25600": (3200, 25600),
             "ISO 25600–102400": (25600, 102400)}
    synthetic_noisy = {}
    for band, iso_range in bands.items():
        stats = []
        for _ in range(args.samples // len(bands)):
            img = corpus[rng.integers(len(corpus))]
            y, x = rng.integers(0, img.shape[0] - 192 + 1), rng.integers(0, img.shape[1] - 192 + 1)
            noisy, clean, _ = synth.srgb_pair(img[y:y + 192, x:x + 192], rng, iso_range=iso_range,
                                              luma_nr=args.luma_nr)
            stats.append(synth.noise_stats(noisy - clean, clean))
            synthetic_noisy.setdefault(band, []).append(noisy)
        summarise(f"synthetic {band}", stats)

    print("\n## Flat patches of noisy photos without a reference (plane fit per channel)\n")
    print(f"| source | patches | {bins} | autocorr lag 1 2 3 | channel corr |\n|---|---|" + "---|" * 7)
    groups: dict[str, list] = {}
    for name, img in synth.real_noisy():
        groups.setdefault(name.split("/")[1], []).extend(synth.flat_patches(img))
    for subset, rows in pairs.items():
        groups[f"dev {subset} (noisy only)"] = [p for _, n, _ in rows for p in synth.flat_patches(n)]
    for band, images in synthetic_noisy.items():
        groups[f"synthetic {band}"] = [p for n in images for p in synth.flat_patches(n, keep=0.1)]
    for name, patches in groups.items():
        summarise(name, [synth.noise_stats(r, s, min_count=50) for r, s in patches])


if __name__ == "__main__":
    main()
