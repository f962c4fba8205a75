"""What the C-BSN student loses to its level network: the same photos told the level network's estimate
and told the synthesis' own noise level (a perfect level network), through the engine.

    .venv/bin/python tests/benchmarks/bench_photo_level.py [--isos 100,400,1600,6400,25600] [--limit N]
        [--source eval|train]

Photos: the Kodak24 and McMaster centre crops (256², ``--source eval``, the evaluation sets' renderings:
same cameras and seeds) or 40 random 256² crops of the training corpus (``train``), each through a random
camera of ``models/synth.py`` at each full-frame ISO. For each ISO: the mean gain over the noisy input
and the worst image's, told (a) the level network's estimate (the default), (b) the synthesis' level
(the per-channel median of its per-pixel map, the quantity the level network learnt), and the ratio of
(a) to (b) per image (median and 10–90 %). A gap between (a) and (b) is what a better level network is
worth; what (b) still loses is the student's own.
"""
from __future__ import annotations

import argparse
import numpy as np


def photos(source: str, limit: int | None) -> list[tuple[int, np.ndarray]]:
    """(seed index, float32 RGB photo): for ``eval`` the index within its folder, as the evaluation sets
    seed their renderings."""
    from quietlens.models import recipe, synth

    if source == "eval":
        found = recipe.evaluation_sources()
        return [(i, recipe._float(im)) for folder in ("kodak24", "mcmaster")
                for i, (_, im) in enumerate(found[folder])][:limit]
    images = synth.clean_corpus("train")
    rng = np.random.default_rng(7)
    out = []
    for i in rng.choice(len(images), 40, replace=False):
        im = images[i]
        y, x = (int(rng.integers(0, n - 256 + 1)) for n in im.shape[:2])
        out.append((len(out), np.ascontiguousarray(im[y:y + 256, x:x + 256], np.float32)))
    return out[:limit]


def main() -> None:
    from quietlens.engine.image import Image
    from quietlens.engine.methods import get
    from quietlens.engine.progress import CancelToken, no_progress
    from quietlens.models import recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isos", default="100,400,1600,6400,25600")
    ap.add_argument("--limit", type=int, help="at most this many photos")
    ap.add_argument("--source", choices=["eval", "train"], default="eval")
    args = ap.parse_args()
    method = get("cbsn")
    student = {"network": next(p for p in method.params if p.name == "network").parse("student")}
    items = photos(args.source, args.limit)
    print(f"{len(items)} photos ({args.source}); gain over the noisy input, dB: mean (worst image)")
    print(f"{'ISO':>6}  {'level network':>16}  {'synthesis level':>16}  network / synthesis")
    for iso in (float(v) for v in args.isos.split(",")):
        gains, ratios = [], []
        for i, im in items:
            rng = np.random.default_rng([1000, int(iso), i])  # recipe.evaluation_sets' seeds for its photos
            noisy, clean, level = recipe.evaluation_rendering(im, iso, rng)
            image = Image(np.ascontiguousarray(noisy, np.float32), "photo", "HWC", "png")
            noisy_psnr = recipe.scores(clean, noisy)[0]
            row = []
            for told in ("network", "synthesis"):
                state = method.prepare(image, no_progress, CancelToken(), "cpu")
                if told == "synthesis":  # in the network's units: σ of the standardised photo
                    state.levels[recipe.LEVEL_ID] = np.median(level.reshape(-1, 3), axis=0) / state.std
                out = method.run(image, state, student, None, no_progress, CancelToken()).data
                row.append(recipe.scores(clean, out)[0] - noisy_psnr)
                if told == "network":
                    estimate = state.levels[recipe.LEVEL_ID] * state.std
            gains.append(row)
            ratios.append(float(np.median(estimate / np.maximum(np.median(level.reshape(-1, 3), axis=0), 1e-6))))
        g = np.array(gains)
        cells = [f"{g[:, k].mean():+6.2f} ({g[:, k].min():+6.2f})" for k in range(2)]
        lo, mid, hi = np.percentile(ratios, [10, 50, 90])
        print(f"{iso:6.0f}  {cells[0]:>16}  {cells[1]:>16}  {mid:.2f} ({lo:.2f}–{hi:.2f})", flush=True)


if __name__ == "__main__":
    main()
