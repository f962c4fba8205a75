"""The ``quietlens`` command: info, methods, denoise, batch, demo, calibrate, synthesize, train; and
``--self-test``, which checks the install (see :mod:`.selftest`).

Every error the user can cause prints one readable line and exits with status 2 (a file-system error
too, never a traceback); cancelling with Ctrl-C or SIGTERM exits with 130 and writes nothing partial (a
batch writes its report and says what it kept). Output piped into a command that stops reading (``info
--json | head``) ends quietly.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import Cancelled, QuietLensError
from .progress import CancelToken

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 1, 2, 130


def _positive_int(text: str) -> int:
    """argparse type for counts (workers, threads, steps): refuses 0 and negatives with the rule."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1, 2, ...), got {text!r}")
    return value


def _key_values(pairs: list[str], option: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise QuietLensError(f"{option} expects NAME=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


class _Bar:
    """A tqdm bar driven by the engine's (fraction, message) progress calls."""

    def __init__(self, desc: str, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=desc, disable=quiet, leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")

    def __call__(self, fraction: float, message: str = "") -> None:
        self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def cmd_info(args) -> int:
    from . import io, runtime
    from .image import readable_facts

    if args.providers:
        print(json.dumps(runtime.describe(), indent=2))
        return 0
    if args.path is None:
        raise QuietLensError("info needs a FILE or a FOLDER (or --providers)")
    path = Path(args.path)
    unreadable: list[OSError] = []
    if path.is_dir() and not _has_dicom(path):
        from .batch import find_inputs

        targets = find_inputs(path, on_error=unreadable.append)
    else:
        targets = [path]
    noise = None
    if args.noise:
        from .methods import get
        from .methods.yond import describe_noise

        noise = get("yond", options=_options(args))  # a missing profile fails here, before any file
    failed = len(unreadable)
    for exc in unreadable:  # a folder that cannot be listed is reported, never skipped silently
        facts = {"error": f"this folder cannot be read ({exc.strerror or exc})"}
        if args.json:
            print(json.dumps({"path": str(exc.filename), **facts}))
        else:
            print(f"{exc.filename}\n  {'error':<16} {facts['error']}")
    for target in targets:
        try:
            image = io.load(target)
            facts = image.describe()
            if noise is not None:
                facts.update(describe_noise(image, detailed=args.json, method=noise))
        except QuietLensError as exc:
            failed += 1
            facts = {"error": exc.reason if exc.path in (None, target) else str(exc)}  # e.g. a series' slice
        if args.json:
            print(json.dumps({"path": str(target), **facts}))
        else:
            print(target)
            rows = readable_facts(facts)  # labelled and rounded for people; --json keeps full precision
            width = max(len(label) for label, _ in rows)
            for label, text in rows:
                print(f"  {label:<{width}}  {text}")
    return EXIT_FAILED if failed else 0


def _has_dicom(folder: Path) -> bool:
    from . import io

    try:
        return any(io.full_suffix(p) in io.DICOM_SUFFIXES for p in folder.iterdir() if p.is_file())
    except OSError as exc:
        raise QuietLensError(f"cannot be read ({exc.strerror or exc})", folder) from exc


def cmd_methods(args) -> int:
    from . import catalogue
    from .methods import available

    for m in available(include_internal=args.all):
        print(f"{m.name:<12} {m.title} — {m.summary}")
        print(f"{'':<12} images: {', '.join(m.kinds)}")
        for p in m.params:
            unit = f" {p.unit}" if p.unit else ""
            values = "|".join(p.choices) if p.choices else f"{p.minimum:g}..{p.maximum:g}{unit}"
            print(f"{'':<12} --param {p.name}=<{values}, default {p.label(p.default)}>  {p.doc}")
        for o in m.options:
            print(f"{'':<12} --{o.name} <default {o.default}>  {o.doc}")
    catalogue.load()
    for problem in catalogue.problems():  # a broken user manifest: shipped models still work, say what was skipped
        print(f"quietlens: warning: {problem}", file=sys.stderr)
    return 0


def cmd_denoise(args) -> int:
    from . import pipeline, runtime
    from .methods import get

    if args.threads:
        runtime.set_threads(args.threads)
    region_params = _key_values(args.region, "--region")  # checked against the method by the pipeline
    method = get(args.method, args.model, _options(args))
    bar = _Bar(Path(args.input).name, args.quiet)
    try:
        result = pipeline.denoise_file(
            args.input, args.output, method, _key_values(args.param, "--param"),
            mask=args.mask, region_params=region_params, provider=args.provider,
            overwrite=args.overwrite, progress=bar, cancel=_cancel_on_signals(),
        )
    finally:
        bar.close()
    if args.save_sigmas:
        _save_artifacts(result, Path(args.save_sigmas))
    for warning in result.warnings:
        print(f"quietlens: warning: {args.output}: {warning}", file=sys.stderr)
    if not args.quiet:
        times = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items())
        print(f"{args.output}: {result.method} on {result.provider} ({times})")
    return 0


def _options(args) -> dict[str, str]:
    """The method options given on the command line (``--profile``)."""
    return {"profile": args.profile} if getattr(args, "profile", None) else {}


def _save_artifacts(result, folder: Path) -> None:
    """Write a method's interpretable maps (e.g. Filter2Noise sigma maps) as float32 TIFFs."""
    import tifffile

    from . import io
    from .methods import get

    maps = get(result.method).artifacts(result.state)
    if not maps:
        raise QuietLensError(f"method {result.method} has no maps to save for this image")
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in maps.items():
        with io.atomic_path(folder / f"{name}.tif", overwrite=True) as tmp:
            tifffile.imwrite(tmp, array.astype("float32"))


def cmd_batch(args) -> int:
    from . import batch

    params = _key_values(args.param, "--param")
    bar = _Bar("files", args.quiet)

    def on_file(i: int, n: int, r) -> None:
        bar(((i + 1) / n) if n else 1.0, f"{i + 1}/{n} {Path(r.input).name}: {r.status}")
        if r.status == "failed":
            bar.bar.write(f"failed: {r.error}")
        for warning in r.warnings:
            bar.bar.write(f"warning: {r.input}: {warning}")

    cancel = _cancel_on_signals(interrupt=True)  # Ctrl-C, like SIGTERM, stops after the current step
    try:
        results = batch.run_batch(args.input, args.output, args.method, params, include=args.include or ["*"],
                                  model=args.model, options=_options(args), provider=args.provider,
                                  on_file=on_file, cancel=cancel,
                                  timeout=args.timeout, scheduler=args.scheduler, workers=args.workers)
    finally:
        bar.close()
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed", "cancelled")}
    warned = sum(bool(r.warnings) for r in results)
    if not args.quiet:
        print(", ".join(f"{n} {s}" for s, n in counts.items()) + (f" ({warned} with warnings)" if warned else "")
              + f"; report: {Path(args.output) / batch.REPORT_NAME}")
    if counts["cancelled"]:
        print(f"quietlens: cancelled; {batch.kept(results, Path(args.output).resolve())}; run the same command "
              "again to finish", file=sys.stderr)
        return EXIT_CANCELLED
    return EXIT_FAILED if counts["failed"] else 0


def cmd_calibrate(args) -> int:
    from .noise import pnnp

    folder = pnnp.calibrate(args.dark, args.flat, name=args.name, steps=args.steps, seed=args.seed,
                            log=(lambda m: None) if args.quiet else print)
    print(f"noise profile: {folder}")
    return 0


def cmd_synthesize(args) -> int:
    from .noise import pnnp

    profile = pnnp.Profile.load(args.profile)
    written = pnnp.synthesize_folder(args.clean, profile, args.output, isos=args.iso, fmt=args.format,
                                     seed=args.seed, gain=args.gain, log=(lambda m: None) if args.quiet else print)
    print(f"{len(written)} noisy raw files in {args.output}")
    return 0


def cmd_train(args) -> int:
    from .train import train_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bar = _Bar(f"train {args.method}", args.quiet)
    try:
        entries = train_model(args.method, args.data, name=args.name, base=args.base, minutes=args.minutes,
                              steps=args.steps, device=args.device, progress=bar, cancel=_cancel_on_signals())
    finally:
        bar.close()
    if not args.quiet:
        print(f"registered {', '.join(e.id for e in entries)} in {entries[0].root}; use it with "
              f"`quietlens denoise IN -o OUT --method {args.method} --model {entries[0].id}`")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.output), method=args.method, provider=args.provider)
    return 0


_CANCEL = CancelToken()


def _cancel_on_signals(interrupt: bool = False) -> CancelToken:
    """SIGTERM (and with ``interrupt`` the first Ctrl-C) sets the shared token so a long run stops cleanly
    between steps; a second Ctrl-C interrupts at once."""

    def on_interrupt(*_) -> None:
        if _CANCEL.cancelled:
            raise KeyboardInterrupt
        _CANCEL.cancel()
        print("\nquietlens: cancelling after the current step (Ctrl-C again to stop at once)", file=sys.stderr)

    try:
        signal.signal(signal.SIGTERM, lambda *_: _CANCEL.cancel())
        if interrupt:
            signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not in the main thread
        pass
    return _CANCEL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quietlens", description="Denoise photos, RAW files, CT and MRI.")
    parser.add_argument("--version", action="version", version=f"QuietLens {__version__}")
    parser.add_argument("--self-test", action="store_true",
                        help="load every shipped model, run every method on built-in images, exit 0 if all pass")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("info", help="describe a file, a DICOM series folder, or every image in a folder")
    p.add_argument("path", nargs="?")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--providers", action="store_true", help="show ONNX Runtime version and providers")
    p.add_argument("--noise", action="store_true", help="also estimate a RAW file's noise (gain K, read noise)")
    p.add_argument("--profile", help="with --noise: the camera noise profile to compare (default auto; none: blind)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("methods", help="list the denoising methods and their parameters")
    p.add_argument("--all", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_methods)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--method", required=True, help="see `quietlens methods`")
        p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
        p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--model", help="a model family made by `quietlens train` (cbsn, sdap)")
        p.add_argument("--profile", help="yond: camera noise profile from `quietlens calibrate` (name or folder); "
                       "default auto: a profile of the photo's camera and ISO when there is one; none: blind")
        p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser("denoise", help="denoise one file or DICOM series folder")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True, help="output file (or folder for a DICOM series)")
    common(p)
    p.add_argument("--mask", help="region mask image: non-zero pixels are inside the region")
    p.add_argument("--region", action="append", default=[], metavar="NAME=MULTIPLIER",
                   help="multiply a parameter inside the mask, e.g. --region strength=0.5")
    p.add_argument("--save-sigmas", metavar="DIR", help="also save the method's maps (Filter2Noise sigmas)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for inference")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (never the input)")
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser("batch", help="denoise a folder tree into a mirrored output tree (resumable)")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    common(p)
    p.add_argument("--include", action="append", metavar="GLOB", help="only files matching (repeatable)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="fail a file that takes longer (each file then runs in a helper process)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="run the files on this Dask cluster (workers must see the same paths)")
    where.add_argument("--workers", type=_positive_int, metavar="N", help="run the files on N local worker processes")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("calibrate", help="make a camera noise profile from dark frames (and flat frames)")
    p.add_argument("--dark", required=True, metavar="DIR", help="folder of dark RAW frames (any ISO mix)")
    p.add_argument("--flat", metavar="DIR", help="folder of flat RAW frames, in pairs per exposure, for the gain")
    p.add_argument("--name", help="profile name (default: the camera model)")
    p.add_argument("--steps", type=int, default=400, help="training steps of the pixel-noise proxy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("synthesize", help="add a calibrated camera's noise to clean RAW files (training data)")
    p.add_argument("--clean", required=True, metavar="DIR", help="folder of clean RAW files")
    p.add_argument("--profile", required=True, help="profile name, folder or profile.json")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--iso", type=float, action="append", help="ISO setting (repeatable; default: all calibrated)")
    p.add_argument("--gain", type=float, help="system gain K in DN per electron (default: the profile's)")
    p.add_argument("--format", choices=["dng", "npz"], default="dng")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("train", help="adapt cbsn or sdap to your camera from a folder of its noisy photos")
    p.add_argument("method", choices=["cbsn", "sdap"])
    p.add_argument("--data", required=True, help="folder of noisy photos (no clean references needed)")
    p.add_argument("--from", dest="base", metavar="MODEL", help="model to start from (default: the shipped one)")
    p.add_argument("--name", help="name of the new model (default: METHOD-FOLDERNAME)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="training time budget (default 10)")
    budget.add_argument("--steps", type=int, help="teacher training steps (reproducible budget)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=_positive_int, help="CPU threads for training")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="make a noisy CT slice from pydicom's test data and denoise it")
    p.add_argument("-o", "--output", default="quietlens-demo", help="folder for the demo files")
    p.add_argument("--method", default="f2n")
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.self_test:
        from .selftest import main as self_test

        return self_test()
    if args.command is None:
        parser.error("a command is required (or --self-test)")
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # the reader of our output went away (`quietlens info --json | head`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit does not fail again
        return EXIT_FAILED
    except Cancelled as exc:
        print(f"quietlens: {exc.reason}" if exc.reason != Cancelled().reason else
              "quietlens: cancelled; nothing partial was written", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("quietlens: cancelled; nothing partial was written", file=sys.stderr)
        return EXIT_CANCELLED
    except QuietLensError as exc:
        print(f"quietlens: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # a file-system failure no engine check anticipated: one line, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"quietlens: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
