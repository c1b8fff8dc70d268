"""Do the SVS, pyramid TIFF and DICOM copies of CMU-1 get the same tile calls? (issue 13, item 1)

    python bench/format_agreement.py [--model colon-he] [--overlap 0.5] [--data ../shared/data]

Prints, per copy: the pyramid levels skipped by the level check (and how long the check took),
the level tiles are read from, the category counts, and the share of tiles whose category and
class agree with the SVS (the reference: one level, nothing to mistrust). Measured figures are in
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="colon-he")
    ap.add_argument("--overlap", type=float, default=0.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()

    from cellview.analysis.classifier import OnnxClassifier
    from cellview.analysis.model_lookup import resolve_model
    from cellview.analysis.model_spec import ModelSpec
    from cellview.analysis.pipeline import run_analysis
    from cellview.analysis.results import AnalysisParams
    from cellview.slides.levels import check_levels, describe_skipped
    from cellview.slides.opening import open_slide

    slides = Path(args.data) / "slides"
    copies = {"svs": slides / "CMU-1-Small-Region.svs",
              "tiff": slides / "derived" / "CMU-1-Small-Region-pyramid.tiff",
              "dicom": slides / "derived" / "CMU-1-Small-Region-dicom"}
    classifier = OnnxClassifier(ModelSpec.load(resolve_model(args.model)), device=args.device)
    params = AnalysisParams(overlap=args.overlap)
    print(f"model {classifier.describe()}; overlap {args.overlap}")
    calls = {}
    for name, path in copies.items():
        with open_slide(path, check_levels=False) as raw:
            t0 = time.perf_counter()
            skipped = check_levels(raw)
            check_s = time.perf_counter() - t0
        result = run_analysis(path, classifier, params)
        g = result.grid
        calls[name] = {g.rect(i)[:2]: (int(result.pred_category[i]), int(result.pred_class[i]))
                       for i in np.flatnonzero(result.done)}
        print(f"{name:5}: {describe_skipped(skipped) or 'no level skipped'} (check {check_s * 1000:.0f} ms); "
              f"tiles read from level {g.read_level}; {result.n_done} tiles {result.category_counts()}")
    ref = calls["svs"]
    for name in ("tiff", "dicom"):
        common = sorted(set(ref) & set(calls[name]))
        cat = np.mean([ref[t][0] == calls[name][t][0] for t in common])
        cls = np.mean([ref[t][1] == calls[name][t][1] for t in common])
        print(f"svs vs {name}: {len(common)} common tiles (svs {len(ref)}, {name} {len(calls[name])}); "
              f"same category {cat:.1%}, same class {cls:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
