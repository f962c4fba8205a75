"""Inference speed of the photo and raw networks on a CUDA GPU, per graph of a model folder.

    python tests/benchmarks/bench_cuda.py [FOLDER]        # default: assets/models

Each graph listed in FOLDER/manifest.json runs on a 24 MP-sized input (6,000 × 4,000 pixels; raw graphs
take the 2 × 2-packed planes of such a mosaic) in tiles of 1024² plus the graph's receptive-field halo,
as the engine tiles it. With ONNX Runtime's CUDA provider (``pip install onnxruntime-gpu``) the ONNX
graphs are timed; without it, the same networks rebuilt from the manifest's architecture in PyTorch
(fp32 and fp16 autocast), which bounds what a CUDA runtime can do with them. Timings exclude start-up:
one tile runs first. Prints a table: graph, runtime, seconds per 24 MP, MP/s.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT, TILE = 6000, 4000, 1024


def tiles(entry: dict) -> tuple[int, list[tuple[int, int]]]:
    """Padded tile side and the tile grid of a 24 MP input for this graph (raw: its packed planes)."""
    raw = entry["inputs"][0]["shape"][1] == 4
    w, h = (WIDTH // 2, HEIGHT // 2) if raw else (WIDTH, HEIGHT)
    m = max(int(entry.get("tile_multiple", 1)), 1)
    side = -(-(TILE + 2 * int(entry["receptive_field"])) // m) * m
    return side, [(y, x) for y in range(0, h, TILE) for x in range(0, w, TILE)]


def feeds(entry: dict, side: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for io in entry["inputs"]:
        c = io["shape"][1]
        out[io["name"]] = (rng.random((1, c, side, side), dtype=np.float32) * (0.05 if io["name"] == "t" else 1))
    return out


def time_ort(path: Path, entry: dict) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    side, grid = tiles(entry)
    x = feeds(entry, side, np.random.default_rng(0))
    session.run(None, x)
    start = time.perf_counter()
    for _ in grid:
        session.run(None, x)
    return time.perf_counter() - start


def torch_module(entry: dict):
    from quietlens.models import bsn, snrnet

    arch = entry["provenance"].get("architecture", {})
    if entry["method"] == "yond":
        return snrnet.SNRNet(tuple(arch["channels"]), arch["blocks"])
    if entry["provenance"].get("role") == "teacher":
        return bsn.INFERENCE[entry["method"]](bsn.DBSN(bsn.BSNConfig(**arch)))
    return bsn.Student(bsn.StudentConfig(**arch))


def time_torch(entry: dict, half: bool) -> float:
    import torch

    module = torch_module(entry).cuda().eval()
    side, grid = tiles(entry)
    x = [torch.from_numpy(v).cuda() for v in feeds(entry, side, np.random.default_rng(0)).values()]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
        module(*x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in grid:
            module(*x).float().cpu()  # the engine copies every tile back
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "assets" / "models"
    import onnxruntime as ort
    import torch

    providers = ort.get_available_providers()
    print(f"ONNX Runtime {ort.__version__}: {', '.join(providers)}; PyTorch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA'}", flush=True)
    rows = []
    for entry in json.loads((folder / "manifest.json").read_text())["models"]:
        if entry["method"] not in ("cbsn", "sdap", "yond"):
            continue
        runs = []
        if "CUDAExecutionProvider" in providers:
            runs.append(("ONNX Runtime CUDA", lambda: time_ort(folder / entry["file"], entry)))
        if torch.cuda.is_available():
            runs += [("PyTorch CUDA fp32", lambda: time_torch(entry, False)),
                     ("PyTorch CUDA fp16", lambda: time_torch(entry, True))]
        for name, run in runs:
            seconds = run()
            rows.append((entry["id"], name, seconds, WIDTH * HEIGHT / 1e6 / seconds))
            print(f"[{entry['id']} {name}: {seconds:.2f} s]", flush=True)
    print(f"\n| graph | runtime | s per 24 MP | MP/s |\n|---|---|---|---|")
    for graph, name, seconds, rate in rows:
        print(f"| {graph} | {name} | {seconds:.2f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
