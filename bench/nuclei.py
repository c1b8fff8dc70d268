"""Tiles per second of the nuclei step alone, beside the read rate of the same tiles.

    python bench/nuclei.py SLIDE [--tile-px 224] [--spacing 0.5] [--repeats 3] [--picture docs/nuclei_check.png]

One thread, so the figure is per core (the pipeline runs the step in each reader thread).
Prints figures only (no assertions). ``--picture`` also saves a few tiles with their nucleus
contours drawn, to check by eye that they lie on the dark nuclei.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.analysis.morphology import draw_contours, measure_nuclei, patch_mpp  # noqa: E402
from cellview.analysis.tiling import build_grid, read_tile  # noqa: E402
from cellview.analysis.tissue import TissueParams, detect_tissue  # noqa: E402
from cellview.slides.opening import open_slide  # noqa: E402


def picture(tiles: list[np.ndarray], mpp: float | None, path: Path, n: int = 8) -> None:
    """Pairs (plain | contours) of the ``n`` tiles with most nuclei spread over the slide, 2 per row."""
    pick = np.linspace(0, len(tiles) - 1, n).astype(int)
    panels = []
    for i in pick:
        m = measure_nuclei(tiles[i], mpp, want_contours=True)
        drawn = draw_contours(tiles[i], m, color=(0, 255, 0), thickness=1)
        pair = np.hstack([tiles[i], np.full((tiles[i].shape[0], 4, 3), 255, np.uint8), drawn])
        label = f"tile {i}: {m.count} nuclei, median {m.median_area:.0f} um2"
        cv2.putText(pair, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(pair, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(np.pad(pair, ((4, 4), (4, 4), (0, 0)), constant_values=255))
    rows = [np.hstack(panels[k:k + 2]) for k in range(0, len(panels) - 1, 2)]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("--tile-px", type=int, default=224)
    ap.add_argument("--spacing", type=float, default=0.5, help="model µm per pixel")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--picture", type=Path)
    args = ap.parse_args()
    cv2.setNumThreads(1)

    slide = open_slide(args.slide)
    mpp = slide.require_mpp().um
    grid = build_grid(slide, args.tile_px, args.spacing, detect_tissue(slide, TissueParams(), mpp))
    pmpp = patch_mpp(grid, mpp)

    t0 = time.perf_counter()
    tiles = [read_tile(slide, grid, i) for i in range(grid.n_tiles)]
    read_s = time.perf_counter() - t0

    measure_nuclei(tiles[0], pmpp)  # warm-up
    best = float("inf")
    counts: list[int] = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        counts = [measure_nuclei(t, pmpp).count for t in tiles]
        best = min(best, time.perf_counter() - t0)
    t0 = time.perf_counter()
    for t in tiles:
        measure_nuclei(t, pmpp, want_contours=True)
    contour_s = time.perf_counter() - t0

    n = len(tiles)
    print(f"slide               {args.slide.name} ({slide.dimensions[0]} x {slide.dimensions[1]}, {mpp:.3f} um/px)")
    print(f"tiles               {n} x {args.tile_px} px at {pmpp:.3f} um/px")
    print(f"machine             {platform.processor() or platform.machine()}, {os.cpu_count()} cores; 1 thread")
    print(f"read                {n / read_s:8.1f} tiles/s")
    print(f"nuclei              {n / best:8.1f} tiles/s  ({best / n * 1e3:.2f} ms/tile, best of {args.repeats})")
    print(f"nuclei + contours   {n / contour_s:8.1f} tiles/s")
    print(f"nuclei per tile     median {np.median(counts):.0f}, range {min(counts)}-{max(counts)}")
    if args.picture:
        picture(tiles, pmpp, args.picture)
        print(f"picture             {args.picture}")
    slide.close()


if __name__ == "__main__":
    main()
