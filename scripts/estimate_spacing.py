"""Estimate the µm/px of a labelled image set by matching nucleus sizes against GlaS (0.62 µm/px).

    python scripts/estimate_spacing.py [--data ../shared/data] [--per-class 60]

Nuclei: haematoxylin optical density (Ruifrok & Johnston colour deconvolution, the core's), Otsu
threshold per image, 4-connected components of at least 4 px; the statistic is the median component
area in px². GlaS images of the same category are rescaled by known factors and JPEG-compressed
(quality 90, like the other sets) and measured the same way; the factor whose median area matches the
target set's gives its spacing: 0.62 µm/px × factor. The same pipeline on EBHI-Seg reproduces the
model card's 1.5 µm/px estimate, which is the check that the method transfers.
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

from cellview.analysis.morphology import haematoxylin  # noqa: E402
from cellview.analysis.tissue import otsu_threshold  # noqa: E402
from cellview.slides.image_slide import read_image_rgb  # noqa: E402

GLAS_UM_PX = 0.62
FACTORS = np.exp(np.linspace(np.log(0.4), np.log(3.5), 27))


def nucleus_areas(rgb: np.ndarray) -> np.ndarray:
    h = cv2.GaussianBlur(haematoxylin(rgb), (0, 0), 0.7)
    mask = (h > otsu_threshold(h.ravel())).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return areas[areas >= 4]


def median_area(images: list[np.ndarray]) -> float:
    return float(np.median(np.concatenate([nucleus_areas(im) for im in images])))


def jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def rescale(rgb: np.ndarray, f: float) -> np.ndarray:
    """GlaS image as if scanned at 0.62 × f µm/px."""
    h, w = rgb.shape[:2]
    size = (max(8, round(w / f)), max(8, round(h / f)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if f > 1 else cv2.INTER_CUBIC)


def read_set(root: Path, csv_name: str, label_col: str, keep: dict[str, str], per_class: int,
             seed: int = 0) -> dict[str, list[np.ndarray]]:
    with open(root / csv_name, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for raw, cat in keep.items():
        paths = [r["image"] for r in rows if r[label_col] == raw]
        pick = rng.choice(len(paths), min(per_class, len(paths)), replace=False)
        out.setdefault(cat, []).extend(read_image_rgb(root / Path(csv_name).parent / paths[i]) for i in pick)
    return out


def match(target: float, curve: list[tuple[float, float]]) -> float:
    """Factor where the GlaS curve (median area falls as the factor grows) crosses ``target``."""
    f = np.array([c[0] for c in curve])
    a = np.array([c[1] for c in curve])
    order = np.argsort(a)
    return float(np.exp(np.interp(target, a[order], np.log(f[order]))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    d = args.data
    glas = read_set(d / "glas", "labels.csv", "class3", {"normal": "normal", "malignant": "malignant"}, 100)
    sets = {
        "ebhi_seg": read_set(d / "ebhi_seg", "labels.csv", "class6",
                             {"Normal": "normal", "Adenocarcinoma": "malignant"}, args.per_class),
        "lc25000_colon": read_set(d / "lc25000_colon", "labels.csv", "class",
                                  {"colon_n": "normal", "colon_aca": "malignant"}, args.per_class),
    }
    report: dict[str, dict[str, float]] = {}
    for cat in ("normal", "malignant"):
        curve = [(float(f), median_area([jpeg(rescale(im, f)) for im in glas[cat]])) for f in FACTORS]
        print(f"GlaS {cat} ({len(glas[cat])} images) median nucleus area px² by factor: "
              + ", ".join(f"{f:.2f}:{a:.0f}" for f, a in curve[::3]))
        for name, by_cat in sets.items():
            area = median_area(by_cat[cat])
            f = match(area, curve)
            report.setdefault(name, {})[f"{cat}_median_area_px2"] = area
            report[name][f"{cat}_factor"] = round(f, 3)
            report[name][f"{cat}_um_px"] = round(GLAS_UM_PX * f, 3)
            print(f"  {name} {cat}: median area {area:.0f} px² → factor {f:.2f} → {GLAS_UM_PX * f:.2f} µm/px")
        report.setdefault("glas", {})[f"{cat}_median_area_px2"] = median_area(glas[cat])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
