"""How long ``cellview adapt`` takes for a lab's handful of labelled images (target: 15 images under 60 s on 2 cores).

    python bench/adapt_speed.py [--set glas|ebhi_seg] [--per-category 5] [--model colon-he] [--repeat 3]

Labels ``--per-category`` images of each category of a set in ../shared/data (at the set's µm/px, labels
given as categories, as a lab would), then runs the whole adaptation — reading the tiles as
``cellview analyze`` cuts them, the base model's features, the cross-validation, the final fit and
writing the model folder — into a temporary folder, and prints the time of each stage (best of
``--repeat``), the tiles and the machine's load. The written model is thrown away.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CELLVIEW_DATA_DIR") or REPO.parent / "shared" / "data")
SETS = {"glas": ("glas/labels.csv", "image", "class3", 0.62),
        "ebhi_seg": ("ebhi_seg/labels.csv", "image", "class3_suggested", 1.5)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="glas", choices=sorted(SETS))
    ap.add_argument("--per-category", type=int, default=5)
    ap.add_argument("--model", default="colon-he")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rel, image_col, label_col, mpp = SETS[args.set]
    rows = list(csv.DictReader(open(DATA / rel, encoding="utf-8")))
    chosen = []
    for cat in ("malignant", "benign", "normal"):
        chosen += [r for r in rows if r[label_col] == cat][:args.per_category]
    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.model_spec import ModelSpec
    from cellview.analysis.results import AnalysisParams
    from cellview.lab.adapt import AdaptProgress, AdaptReport, adapt
    from cellview.lab.labels import LabelSource

    spec = ModelSpec.load(resolve_model(args.model))
    sources = [LabelSource((DATA / rel).parent / r[image_col], r[label_col]) for r in chosen]
    best: dict[str, float] = {}
    report = None
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            stage_t: dict[str, float] = {}
            last, t_last = None, time.perf_counter()
            t0 = t_last
            for item in adapt(sources, spec, Path(tmp) / "m", AnalysisParams(mpp_um=mpp), force=True):
                now = time.perf_counter()
                if last is not None:
                    stage_t[last] = stage_t.get(last, 0.0) + now - t_last
                t_last = now
                if isinstance(item, AdaptProgress):
                    last = item.stage
                elif isinstance(item, AdaptReport):
                    report = item
            stage_t["total"] = time.perf_counter() - t0
        for k, v in stage_t.items():
            best[k] = min(best.get(k, v), v)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"adapt {args.model} on {len(sources)} {args.set} images ({args.per_category} per category, --mpp {mpp}): "
          f"{len(report.lab.features)} tiles, {report.cv_folds} cross-validation folds; best of {args.repeat}:")
    for k in ("reading", "fitting", "writing", "total"):
        if k in best:
            print(f"  {k:8s} {best[k]:6.1f} s")
    print(f"  {report.summary()}")
    print(f"  {os.cpu_count()} cores, load average {load:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
