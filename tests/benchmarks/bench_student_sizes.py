"""Student sizes by measured quality per millisecond: each candidate trained alike, then scored and timed.

    .venv/bin/python tests/benchmarks/bench_student_sizes.py [--steps 400] [--threads 1]

Every candidate U-Net (models/bsn.py Student) gets the same supervised pretraining on synthetic pairs
(models/recipe.py, the shipped recipe's first phase: ``--steps`` steps of 8 random 96² crops, Adam 1e-3
halved twice), then is scored in PyTorch on whole images standardised as the engine does: Kodak24 at
two synthetic ISO levels (full-frame ISO 1600 and 51200, fixed cameras per image) and the real dev pairs
(SIDD, Canon). Speed: ONNX Runtime on one thread, process CPU time per megapixel (robust on a shared
machine; two idle cores run a graph in about half of it), and multiply-adds per pixel.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

CANDIDATES = {
    "w16 l3 d2": dict(width=16, full=0, levels=3, depth=2),
    "w16 l3 d2 full8": dict(width=16, full=8, levels=3, depth=2),
    "w32 l3 d2": dict(width=32, full=0, levels=3, depth=2),
    "w32 l3 d2 full16": dict(width=32, full=16, levels=3, depth=2),
    "w32 l4 d2": dict(width=32, full=0, levels=4, depth=2),
    "w48 l4 d2 full16": dict(width=48, full=16, levels=4, depth=2),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - b) ** 2)))


def denoise(net, noisy: np.ndarray) -> np.ndarray:
    import torch

    from quietlens.models.recipe import standardise_image

    z, mu, sd = standardise_image(noisy)
    h, w = z.shape[1:]
    m = net.multiple
    ph, pw = (-h) % m, (-w) % m
    zp = np.pad(z, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    with torch.no_grad():
        y = net(torch.from_numpy(zp)[None])[0].numpy()[:, :h, :w]
    return y.transpose(1, 2, 0) * sd.astype(np.float32) + mu.astype(np.float32)


def eval_sets(seed: int = 0) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    from quietlens.models import synth

    sets = {}
    kodak = synth.clean_corpus("eval")[:24]
    for iso in (1600, 51200):
        rng = np.random.default_rng(seed)
        sets[f"kodak ISO {iso}"] = [synth.srgb_pair(im[:256, :256], rng, iso=iso)[:2] for im in kodak]
    for name, rows in synth.dev_pairs().items():
        sets[name] = [(n, c) for _, n, c in rows]
    return sets


def ort_cpu_ms_per_mp(net) -> float:
    import onnxruntime as ort

    from quietlens.models import bsn

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(bsn.export_onnx(net), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, 3, 512, 512)).astype(np.float32)
    sess.run(None, {"x": x[:, :, :64, :64]})
    cpu = []
    for _ in range(2):
        c = time.process_time()
        sess.run(None, {"x": x})
        cpu.append(time.process_time() - c)
    return min(cpu) * 1000 / (512 * 512 / 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="candidate names")
    args = ap.parse_args()
    import torch

    from quietlens.models import recipe, synth
    from quietlens.models.bsn import Student, StudentConfig, conv_macs_per_pixel

    torch.set_num_threads(args.threads)
    corpus = recipe.Corpus(clean=synth.clean_corpus("train"), noisy=[])
    sets = eval_sets()
    rows = []
    for name, arch in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        plan = recipe.StudentPlan("student", {**arch, "channels": 3}, recipe.Phase(args.steps, 8, 96, 1e-3),
                                  recipe.Phase(1, 1, 96, 1e-3))
        cfg = recipe.PhotoConfig("sdap", {"width": 16, "modules": 1}, recipe.Phase(1, 1, 40, 1e-3), (plan,),
                                 supervised=0.0)
        t = time.perf_counter()
        net, info = recipe.train_student(cfg, "student", corpus, stage="pretrain")
        scores = {k: np.mean([psnr(denoise(net, n), c) for n, c in v]) for k, v in sets.items()}
        noisy = {k: np.mean([psnr(n, c) for n, c in v]) for k, v in sets.items()}
        macs = conv_macs_per_pixel(Student(StudentConfig(**arch)))
        ms = ort_cpu_ms_per_mp(net)
        rows.append((name, macs, ms, info, scores))
        print(f"[{name}: {time.perf_counter() - t:.0f} s, {info['train_cpu_seconds']:.0f} CPU s training] "
              + " ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)
    print(f"\n## Student sizes after {args.steps} supervised steps (PSNR dB; noisy: "
          + ", ".join(f"{k} {v:.2f}" for k, v in noisy.items()) + ")\n")
    print("| student | kMAC/px | ORT CPU ms/MP (1 thread) | train CPU s/step | " + " | ".join(sets) + " |")
    print("|---|---|---|---|" + "---|" * len(sets))
    for name, macs, ms, info, scores in rows:
        print(f"| {name} | {macs / 1e3:.1f} | {ms:.0f} | {info['train_cpu_seconds'] / max(info['steps'], 1):.2f} | "
              + " | ".join(f"{scores[k]:.2f}" for k in sets) + " |")


if __name__ == "__main__":
    main()
