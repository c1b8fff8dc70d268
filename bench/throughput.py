"""Tiles per second for reading alone, inference alone and the whole pipeline, on one slide.

    python bench/throughput.py SLIDE [--model NAME_OR_PATH] [--precision auto] [--batch-size 32] [--workers 2]
    python bench/throughput.py SLIDE --read-only [--code OTHER_CHECKOUT]   # reading's CPU per tile, any version
    python bench/throughput.py SLIDE --compare OLD.onnx,NEW.onnx [--repeat 3]          # side by side
    python bench/throughput.py SLIDE --model colon-he --compare-options none,macenko,reinhard,tta=flips,precision=fp32

Prints figures only (no assertions). Reading and inference share the same cores, so the pipeline can
at best spend each tile's read time and inference time one after the other on all cores: the
shared-core bound is 1 / (1/read-only + 1/inference-only) tiles/s, and end-to-end ÷ bound is the
fraction of it reached. Each stage's CPU time per tile comes from the end-to-end run (CPU clocks of
the reader threads and of the domain maths, the process's CPU clock over the run): CPU figures are
less disturbed by other work on the machine than rates. ``--compare`` runs the end-to-end pipeline for
several models, ``--compare-options`` for several settings, alternating round by round so each sees
the same background load, and prints each one's best rate and its ratio to the first.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

if "--code" in sys.argv:  # measure another checkout's code (e.g. main) with this script
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--code") + 1]).resolve()))
else:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.analysis.classifier import OnnxClassifier  # noqa: E402
from cellview.analysis.model_lookup import resolve_model  # noqa: E402
from cellview.analysis.model_spec import ModelSpec  # noqa: E402
from cellview.analysis.pipeline import TileReaders, batch_indices, plan_tiles, run_analysis  # noqa: E402
from cellview.analysis.results import AnalysisParams  # noqa: E402
from cellview.slides.opening import open_slide  # noqa: E402


def read_only(slide_path: Path, spec: ModelSpec, params: AnalysisParams, min_s: float = 0.0
              ) -> tuple[int, float, list[np.ndarray], float]:
    """(tiles, seconds, a few batches of tiles, process CPU seconds) of the reader threads alone; the slide is
    read again (fresh handles, cold caches) until ``min_s`` seconds have passed, so short runs are not noise."""
    slide = open_slide(slide_path, mpp_um=params.mpp_um)
    slide.require_mpp()
    _, grid = plan_tiles(slide, spec, params)
    try:
        from cellview.analysis.tiling import read_order

        batches = batch_indices(grid.n_tiles, params.batch_size, read_order(grid))
    except ImportError:  # an older checkout (--code): grid order
        batches = batch_indices(grid.n_tiles, params.batch_size)
    slide.close()
    kept: list[np.ndarray] = []
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while n == 0 or time.perf_counter() - t0 < min_s:
        slide = open_slide(slide_path, mpp_um=params.mpp_um)
        readers = TileReaders(slide, grid, batches, params.workers)
        try:
            for _ in batches:
                item = readers.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if len(kept) < 8:
                    kept.append(item.tiles)
        finally:
            readers.close()
            slide.close()
        n += grid.n_tiles
    return n, time.perf_counter() - t0, kept, time.process_time() - c0


def inference_only(clf: OnnxClassifier, batches: list[np.ndarray], n_tiles: int, min_s: float = 0.0
                   ) -> tuple[float, float]:
    """(tiles/s, process CPU seconds per tile) of the forward pass alone (the outputs analyze fetches), over at
    least ``n_tiles`` tiles and ``min_s`` seconds."""
    outputs = (clf.output_name, "features") if clf.has_domain else (clf.output_name,)
    clf.run(batches[0], outputs)  # warm-up (graph optimisation, TensorRT engine load)
    done = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while done < n_tiles or time.perf_counter() - t0 < min_s:
        for b in batches:
            clf.run(b, outputs)
            done += len(b)
            if done >= n_tiles and time.perf_counter() - t0 >= min_s:
                break
    return done / (time.perf_counter() - t0), (time.process_time() - c0) / done


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (5 min {five:.2f})"


def stage_lines(result: object, cores: int, read_cpu_ms: float | None = None) -> list[str]:
    """Each stage's CPU time per tile in the end-to-end run, and how much of the cores' time went unused."""
    t = result.timings  # type: ignore[attr-defined]
    n = max(1, result.n_done)  # type: ignore[attr-defined]
    if "process_cpu_s" not in t:
        return ["stage CPU:      (this checkout's pipeline does not record CPU clocks)"]
    read, checks, domain = t["read_cpu_s"] / n, t["checks_cpu_s"] / n, t["domain_cpu_s"] / n
    total = t["process_cpu_s"] / n
    other = max(0.0, total - read - checks - domain)
    lines = ["stage CPU per tile (end-to-end run):",
             f"  reading (decode + resize)        {read * 1e3:7.2f} ms"
             + (f"   (reading alone: {read_cpu_ms:.2f} ms)" if read_cpu_ms is not None else ""),
             f"  pixel checks / nuclei / stain    {checks * 1e3:7.2f} ms",
             f"  inference + consumer thread      {other * 1e3:7.2f} ms   (ONNX Runtime threads and the loop)",
             f"  domain-score maths               {domain * 1e3:7.2f} ms",
             f"  whole process                    {total * 1e3:7.2f} ms",
             f"cores busy:     {t['process_cpu_s'] / (cores * t['tiles_s']):8.2f}  (process CPU ÷ ({cores} cores × "
             "wall) during the tiles; the rest idled or ran other programs)"]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("--model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    ap.add_argument("--mpp", type=float)
    ap.add_argument("--repeat", type=int, default=1, help="end-to-end runs (best is reported)")
    ap.add_argument("--precision", help="auto, fp32, int8 or fp16 (default: the app's, auto)")
    ap.add_argument("--read-only", action="store_true", help="only the readers: tiles/s and CPU per tile")
    ap.add_argument("--code", help="import cellview from this checkout instead (e.g. an export of main)")
    ap.add_argument("--min-seconds", type=float, default=10.0,
                    help="read-only and inference-only run at least this long (default 10 s: short runs are noise)")
    ap.add_argument("--compare", help="comma-separated models to time end-to-end side by side (first = reference)")
    ap.add_argument("--compare-options", help="comma-separated settings to time side by side: none, macenko, "
                                              "reinhard, tta=flips, tta=d4 (first = reference)")
    args = ap.parse_args()
    if args.compare or args.compare_options:
        return side_by_side(args)

    spec = ModelSpec.load(resolve_model(args.model))
    params = AnalysisParams(batch_size=args.batch_size, workers=args.workers, device=args.device, mpp_um=args.mpp,
                            **({"precision": args.precision} if args.precision else {}))
    cores = os.cpu_count() or 1
    print(f"machine: {platform.node()} {platform.machine()} cores={cores} python {platform.python_version()}")
    print(f"slide:   {args.slide}")
    if args.read_only:
        print(f"code:    {sys.path[0]}; before: {load_line()}")
        n, read_s, _, read_cpu = read_only(args.slide, spec, params, args.min_seconds)
        print(f"read-only:      {n / read_s:8.1f} tiles/s, reading CPU {read_cpu / n * 1e3:.2f} ms per tile "
              f"({n} tiles, {args.workers} reader threads); after: {load_line()}")
        return 0
    extra = {"precision": args.precision} if args.precision else {}
    clf = OnnxClassifier(spec, device=args.device, intra_op_threads=args.threads or None, **extra)
    print(f"model:   {clf.describe()}; {spec.patch_size_pixels} px at {spec.spacing_um_px} µm/px")
    print(f"params:  batch {args.batch_size}, reader threads {args.workers}, ORT threads {args.threads or 'default'}")
    print(f"before:  {load_line()}")

    n, read_s, sample, read_cpu = read_only(args.slide, spec, params, args.min_seconds)
    read_rate = n / read_s
    infer_rate, infer_cpu = inference_only(clf, sample, max(n, 256), args.min_seconds)
    best = None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        result = run_analysis(args.slide, clf, params)
        wall = time.perf_counter() - t0
        rate = result.n_done / result.timings["tiles_s"]
        if best is None or rate > best[0]:
            best = (rate, wall, result)
    assert best is not None
    e2e_rate, wall, result = best
    bound = 1.0 / (1.0 / read_rate + 1.0 / infer_rate)
    print(f"tiles:          {result.n_tiles} (read-only read {n}, the slide {n // max(1, result.n_tiles)}×)")
    print(f"read-only:      {read_rate:8.1f} tiles/s   (CPU {read_cpu / n * 1e3:.2f} ms per tile)")
    print(f"inference-only: {infer_rate:8.1f} tiles/s   (CPU {infer_cpu * 1e3:.2f} ms per tile)")
    print(f"shared-core bound: {bound:5.1f} tiles/s   (1 / (1/read-only + 1/inference-only))")
    print(f"end-to-end:     {e2e_rate:8.1f} tiles/s  (wall {wall:.2f} s incl. tissue detection "
          f"{result.timings['tissue_s']:.2f} s)")
    print(f"fraction of the shared-core bound: {e2e_rate / bound:.2f}")
    for line in stage_lines(result, cores, read_cpu / n * 1e3):
        print(line)
    print(f"peak RSS:       {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"after:   {load_line()}")
    return 0


def side_by_side(args: argparse.Namespace) -> int:
    runs: list[tuple[str, OnnxClassifier, AnalysisParams]] = []
    base = AnalysisParams(batch_size=args.batch_size, workers=args.workers, device=args.device, mpp_um=args.mpp)
    if args.compare:
        for name in args.compare.split(","):
            spec = ModelSpec.load(resolve_model(name.strip()))
            runs.append((f"{spec.name} {spec.version} ({name.strip()})",
                         OnnxClassifier(spec, device=args.device, intra_op_threads=args.threads or None), base))
    else:
        spec = ModelSpec.load(resolve_model(args.model))
        clf = OnnxClassifier(spec, device=args.device, intra_op_threads=args.threads or None)
        for option in args.compare_options.split(","):
            option = option.strip()
            if option.startswith("tta="):
                params = AnalysisParams(**{**base.__dict__, "tta": option[4:]})
            elif option.startswith("precision="):
                runs.append((option, OnnxClassifier(spec, device=args.device, intra_op_threads=args.threads or None,
                                                    precision=option[10:]),
                             AnalysisParams(**{**base.__dict__, "precision": option[10:]})))
                continue
            else:
                params = AnalysisParams(**{**base.__dict__, "stain_normalize": option})
            runs.append((option, clf, params))
    print(f"machine: {platform.node()} {platform.machine()} cores={os.cpu_count()} python {platform.python_version()}")
    print(f"slide:   {args.slide}")
    best = [0.0] * len(runs)
    walls = [[] for _ in runs]
    tiles = [0] * len(runs)
    for r in range(max(1, args.repeat)):
        for k, (label, clf, params) in enumerate(runs):
            t0 = time.perf_counter()
            result = run_analysis(args.slide, clf, params)
            wall = time.perf_counter() - t0
            rate = result.n_done / wall
            walls[k].append(wall)
            tiles[k] = result.n_done
            best[k] = max(best[k], rate)
            print(f"round {r + 1} {label}: {result.n_done} tiles, {wall:.2f} s wall, {rate:.1f} tiles/s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    print("| run | tiles | best end-to-end tiles/s (wall, tissue detection and stain estimate included) | "
          "all walls s | vs first |")
    print("|---|---|---|---|---|")
    for k, (label, _, _) in enumerate(runs):
        print(f"| {label} | {tiles[k]} | {best[k]:.1f} | {', '.join(f'{w:.2f}' for w in walls[k])} | "
              f"{best[k] / best[0]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
