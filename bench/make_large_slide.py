"""Write a large pyramidal JPEG-tiled TIFF built from real tissue, once, into a cache folder.

    python bench/make_large_slide.py [--width 60000 --height 50000] [--out PATH]

The texture is CMU-1-Small-Region (../shared/data/slides) cut into 2048-px blocks, each flipped
or rotated by a hash of its position so JPEG content looks like tissue, laid out inside a few
elliptical "tissue sections" on a white background, so tissue detection matters. Levels are
rendered from pre-downsampled textures (not by reading back), so memory stays at one tile row.
Prints the path; does nothing when the file already exists.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import platformdirs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.slides.opening import open_slide  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
BLOCK = 2048
TILE = 256
MPP_UM = 0.5


def default_path(width: int, height: int) -> Path:
    return Path(platformdirs.user_cache_dir("cellview")) / "bench" / f"large-{width}x{height}.tiff"


def _variants(source: np.ndarray) -> list[np.ndarray]:
    crop = source[:BLOCK, :BLOCK]
    out = []
    for k in range(4):
        rot = np.ascontiguousarray(np.rot90(crop, k))
        out += [rot, np.ascontiguousarray(rot[:, ::-1])]
    return out


def _section_mask(n_bx: int, n_by: int, seed: int = 7) -> np.ndarray:
    """Block-level mask: a few ellipses ('sections') covering roughly half the slide."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((n_by, n_bx), np.uint8)
    for _ in range(4):
        cx, cy = rng.uniform(0.2, 0.8) * n_bx, rng.uniform(0.2, 0.8) * n_by
        ax, ay = rng.uniform(0.12, 0.28) * n_bx, rng.uniform(0.15, 0.3) * n_by
        cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), rng.uniform(0, 180), 0, 360, 1, -1)
    return mask.astype(bool)


def render_level(variants_l: list[np.ndarray], tissue: np.ndarray, width: int, height: int, ds: int):
    """Yield TILE×TILE tiles of one level, row by row."""
    block_l = BLOCK // ds
    w_l, h_l = -(-width // ds), -(-height // ds)
    n_tx, n_ty = -(-w_l // TILE), -(-h_l // TILE)
    white = np.full((block_l, block_l, 3), 242, np.uint8)
    for ty in range(n_ty):
        y0 = ty * TILE
        strip = np.full((TILE, n_tx * TILE, 3), 242, np.uint8)
        for by in range(y0 // block_l, (y0 + TILE - 1) // block_l + 1):
            for bx in range(0, -(-n_tx * TILE // block_l)):
                if by >= tissue.shape[0] or bx >= tissue.shape[1]:
                    continue
                block = variants_l[(bx * 7 + by * 13) % 8] if tissue[by, bx] else white
                sy0, sy1 = max(y0, by * block_l), min(y0 + TILE, (by + 1) * block_l)
                sx0, sx1 = bx * block_l, min((bx + 1) * block_l, n_tx * TILE)
                strip[sy0 - y0:sy1 - y0, sx0:sx1] = block[sy0 - by * block_l:sy1 - by * block_l, : sx1 - sx0]
        for tx in range(n_tx):
            yield strip[:, tx * TILE:(tx + 1) * TILE]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=60000)
    ap.add_argument("--height", type=int, default=50000)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quality", type=int, default=80)
    ap.add_argument("--source", type=Path, default=SOURCE, help="slide whose tissue is tiled")
    args = ap.parse_args()
    out = args.out or default_path(args.width, args.height)
    if out.exists():
        print(out)
        return 0
    import tifffile

    with open_slide(args.source) as slide:
        source = slide.read_region((0, 0), 0, slide.dimensions)
    base = _variants(source)
    n_bx, n_by = -(-args.width // BLOCK), -(-args.height // BLOCK)
    tissue = _section_mask(n_bx, n_by)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.tiff")
    t0 = time.perf_counter()
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        ds = 1
        while True:
            w_l, h_l = -(-args.width // ds), -(-args.height // ds)
            variants_l = base if ds == 1 else [cv2.resize(v, (BLOCK // ds, BLOCK // ds), interpolation=cv2.INTER_AREA)
                                               for v in base]
            tif.write(
                render_level(variants_l, tissue, args.width, args.height, ds),
                shape=(h_l, w_l, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                compression="jpeg", compressionargs={"level": args.quality},
                subfiletype=1 if ds > 1 else 0, metadata=None,
                resolution=(1e4 / (MPP_UM * ds), 1e4 / (MPP_UM * ds)), resolutionunit="CENTIMETER",
            )
            print(f"level ds={ds}: {w_l} x {h_l} written ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            if max(w_l, h_l) <= 2048 or BLOCK // ds < 16:
                break
            ds *= 4
    tmp.rename(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
