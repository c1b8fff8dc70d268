"""Estimate the µm/px of blood smear images from their red cells (about 7.5 µm across).

    python scripts/estimate_smear_spacing.py [--data ../shared/data] [--every 4] [--json FILE]

Red cells: circles found by OpenCV's Hough transform (HOUGH_GRADIENT_ALT on the grey image, σ 1 px blur,
circle "perfectness" ≥ 0.8, radius 3 px to a sixth of the image), leaving out circles whose inside is
nucleus-stained (a white cell: saturation's 90th percentile ≥ 110 of 255). Touching and pale-centred red
cells make some circles too large or too small, so each image's figure is the mode of its circle diameters
(a log-scale kernel density, bandwidth 8 %), not the mean. Spacing = 7.5 µm / the median of the images'
modal diameters, per class; the field width = spacing × image width.

Checks that the method measures what it should: synthetic smears with known red-cell sizes
(``cellview.testing.synthetic_smear``), and real images rescaled by known factors (the diameter must follow).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.slides.image_slide import read_image_rgb  # noqa: E402

RED_CELL_UM = 7.5


def red_cell_circles(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) circles (x, y, r) of red cells: Hough circles not centred on a stained nucleus."""
    grey = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (0, 0), 1.0)
    found = cv2.HoughCircles(grey, cv2.HOUGH_GRADIENT_ALT, dp=1.0, minDist=5, param1=50, param2=0.8,
                             minRadius=3, maxRadius=max(rgb.shape[:2]) // 6)
    if found is None:
        return np.zeros((0, 3))
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    keep = []
    for x, y, r in found[0]:
        inside = np.zeros(grey.shape, np.uint8)
        cv2.circle(inside, (int(x), int(y)), max(1, int(r * 0.6)), 1, -1)
        keep.append(np.percentile(sat[inside > 0], 90) < 110)
    return found[0][np.array(keep, bool)]


def modal_diameter(rgb: np.ndarray) -> float:
    """The image's most common red-cell diameter in px (NaN with fewer than 3 circles)."""
    d = 2 * red_cell_circles(rgb)[:, 2]
    if len(d) < 3:
        return float("nan")
    grid = np.linspace(np.log(4), np.log(200), 500)
    density = np.exp(-0.5 * ((grid[:, None] - np.log(d)[None]) / 0.08) ** 2).sum(1)
    return float(np.exp(grid[density.argmax()]))


def checks() -> dict[str, object]:
    """Known sizes in, the same sizes out: synthetic smears and rescaled real fields."""
    from cellview.testing.synthetic import synthetic_smear

    out: dict[str, object] = {"synthetic": {}}
    for px in (10, 16, 24):
        got = [modal_diameter(synthetic_smear(int(px * 14), seed=s, white_cells=1, red_cell_px=px)[0]) for s in range(3)]
        out["synthetic"][f"{px} px"] = round(float(np.nanmedian(got)), 2)  # type: ignore[index]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    ap.add_argument("--every", type=int, default=4, help="measure every Nth image (default 4)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    root = args.data / "blood_all"
    rows = list(csv.DictReader(open(root / "labels.csv", encoding="utf-8")))[:: args.every]
    per_class: dict[str, list[tuple[float, int]]] = {}
    rescaled: dict[str, list[float]] = {"0.5": [], "1.0": [], "2.0": []}
    for k, row in enumerate(rows):
        rgb = read_image_rgb(root / row["image"])
        if rgb is None:
            continue
        per_class.setdefault(row["class"], []).append((modal_diameter(rgb), rgb.shape[1]))
        if k % 10 == 0 and rgb.shape[1] == 224:
            for f in rescaled:
                size = int(round(224 * float(f)))
                rescaled[f].append(modal_diameter(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)))
    report: dict[str, object] = {"red_cell_um": RED_CELL_UM, "images_every": args.every, "classes": {}}
    diam_224 = []
    for cls, values in per_class.items():
        d = np.array([v[0] for v in values])
        width = np.array([v[1] for v in values], float)
        at_224 = d * 224 / width  # the diameter the field would have at 224 px (the ALL images' size)
        diam_224.extend(at_224[np.isfinite(at_224)].tolist())
        med = float(np.nanmedian(d))
        report["classes"][cls] = {  # type: ignore[index]
            "images": len(values), "no_estimate": int(np.isnan(d).sum()),
            "modal_diameter_px_median": round(med, 2),
            "modal_diameter_px_p10_p90": [round(float(v), 1) for v in np.nanpercentile(d, [10, 90])],
            "image_width_px_median": float(np.median(width)),
            "spacing_um_px": round(RED_CELL_UM / med, 3),
            "field_width_um": round(float(np.nanmedian(RED_CELL_UM / at_224 * 224)), 1),
        }
    all_224 = float(np.median(diam_224))
    report["all_images"] = {"modal_diameter_px_at_224": round(all_224, 2),
                            "spacing_um_px_at_224": round(RED_CELL_UM / all_224, 3),
                            "field_width_um": round(RED_CELL_UM / all_224 * 224, 1)}
    report["checks"] = {**checks(), "rescaled_224_fields": {f: round(float(np.nanmedian(v)), 2)
                                                            for f, v in rescaled.items()}}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
