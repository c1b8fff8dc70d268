"""Tiles per second for reading alone, inference alone and the whole pipeline, on one slide.

    python bench/throughput.py SLIDE [--model NAME_OR_PATH] [--device cpu] [--batch-size 32] [--workers 2]
    python bench/throughput.py SLIDE --compare OLD.onnx,NEW.onnx [--repeat 3]          # side by side
    python bench/throughput.py SLIDE --model colon-he --compare-options none,macenko,reinhard,tta=flips

Prints figures only (no assertions): end-to-end ÷ min(read-only, inference-only) is the
pipeline's efficiency; 1.0 means it runs exactly at its slowest stage. ``--compare`` runs the
end-to-end pipeline for several models, ``--compare-options`` for several stain-normalisation /
test-time-augmentation settings, alternating round by round so each sees the same background load,
and prints each one's best rate and its ratio to the first.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.model import ModelSpec, OnnxClassifier, resolve_model  # noqa: E402
from cellview.pipeline import TileReaders, batch_indices, plan_tiles, run_analysis  # noqa: E402
from cellview.results import AnalysisParams  # noqa: E402
from cellview.slide import open_slide  # noqa: E402


def read_only(slide_path: Path, spec: ModelSpec, params: AnalysisParams) -> tuple[int, float, list[np.ndarray]]:
    slide = open_slide(slide_path, mpp_um=params.mpp_um)
    slide.require_mpp()
    _, grid = plan_tiles(slide, spec, params)
    batches = batch_indices(grid.n_tiles, params.batch_size)
    kept: list[np.ndarray] = []
    t0 = time.perf_counter()
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
    elapsed = time.perf_counter() - t0
    slide.close()
    return grid.n_tiles, elapsed, kept


def inference_only(clf: OnnxClassifier, batches: list[np.ndarray], n_tiles: int) -> float:
    clf.predict(batches[0])  # warm-up (graph optimisation, TensorRT engine load)
    done = 0
    t0 = time.perf_counter()
    while done < n_tiles:
        for b in batches:
            clf.predict(b)
            done += len(b)
            if done >= n_tiles:
                break
    return done / (time.perf_counter() - t0)


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
    ap.add_argument("--compare", help="comma-separated models to time end-to-end side by side (first = reference)")
    ap.add_argument("--compare-options", help="comma-separated settings to time side by side: none, macenko, "
                                              "reinhard, tta=flips, tta=d4 (first = reference)")
    args = ap.parse_args()
    if args.compare or args.compare_options:
        return side_by_side(args)

    spec = ModelSpec.load(resolve_model(args.model))
    clf = OnnxClassifier(spec, device=args.device, intra_op_threads=args.threads or None)
    params = AnalysisParams(batch_size=args.batch_size, workers=args.workers, device=args.device, mpp_um=args.mpp)
    print(f"machine: {platform.node()} {platform.machine()} cores={os.cpu_count()} python {platform.python_version()}")
    print(f"slide:   {args.slide}")
    print(f"model:   {clf.describe()}; {spec.patch_size_pixels} px at {spec.spacing_um_px} µm/px")
    print(f"params:  batch {args.batch_size}, reader threads {args.workers}, ORT threads {args.threads or 'default'}")

    n, read_s, sample = read_only(args.slide, spec, params)
    read_rate = n / read_s
    infer_rate = inference_only(clf, sample, max(n, 256))
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
    slower = min(read_rate, infer_rate)
    print(f"tiles:          {n}")
    print(f"read-only:      {read_rate:8.1f} tiles/s")
    print(f"inference-only: {infer_rate:8.1f} tiles/s")
    print(f"end-to-end:     {e2e_rate:8.1f} tiles/s  (wall {wall:.2f} s incl. tissue detection "
          f"{result.timings['tissue_s']:.2f} s)")
    print(f"efficiency:     {e2e_rate / slower:8.2f}  (end-to-end ÷ slower stage, "
          f"{'read' if read_rate < infer_rate else 'inference'}-bound)")
    print(f"peak RSS:       {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
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
