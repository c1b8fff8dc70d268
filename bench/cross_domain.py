"""Out of domain across domains: how many images of one kind a model of another kind refuses to call.

    python bench/cross_domain.py --model blood-all --set glas --set ebhi_seg --set lc25000_colon --set lc25000_lung
    python bench/cross_domain.py --model colon-he --set blood_all --mpp 0.446
    python bench/cross_domain.py --model blood-all --set blood_all          # in domain: every image should be called

Each image goes through ``cellview analyze``'s own pipeline (``analysis.pipeline.run_analysis``, the model's
domain statistics, its reading rules) with the options given (none by default: what a user who types just
``cellview analyze FOLDER --model M`` gets), and its slide call is counted: ``out_of_domain``, a finding
(malignant / benign / normal), ``too_little_tissue`` (no tile read) or ``not_analysed`` (the image could not
be read as asked, e.g. no pixel size for an H&E model). Sets are the labelled sets in the data folder
(``--every N`` takes every Nth image of a set with more than 200). Prints one table and, with ``--json``,
writes the counts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.analysis.classifier import OnnxClassifier  # noqa: E402
from cellview.analysis.model_lookup import resolve_model  # noqa: E402
from cellview.analysis.model_spec import ModelSpec  # noqa: E402
from cellview.analysis.pipeline import run_analysis  # noqa: E402
from cellview.analysis.results import AnalysisParams, mostly_out_of_domain  # noqa: E402
from cellview.base.errors import CellviewError  # noqa: E402

SETS = {"glas": "glas/labels.csv", "ebhi_seg": "ebhi_seg/labels.csv", "lc25000_colon": "lc25000_colon/labels.csv",
        "lc25000_lung": "lc25000_lung/labels.csv", "blood_all": "blood_all/labels.csv"}


def call_of(result) -> str:
    """The slide call's state (``analysis.call`` when present; before it, the same first steps)."""
    try:
        from cellview.analysis.call import slide_call
    except ImportError:
        slide_call = None
    if slide_call is not None:
        return slide_call(result).category
    if result.n_tiles == 0:
        return "too_little_tissue"
    if mostly_out_of_domain(result):
        return "out_of_domain"
    return result.image_level()["pred_category"] or "not_analysed"


def images(data: Path, name: str, every: int) -> list[tuple[Path, str]]:
    """(path, label) of a set's images (every ``every``-th of a set with more than 200)."""
    rows = list(csv.DictReader(open(data / SETS[name], encoding="utf-8")))
    column = "image" if "image" in rows[0] else "path"
    label = next((c for c in ("class", "class3", "class6", "label") if c in rows[0]), column)
    got = [(data / Path(SETS[name]).parent / r[column], r[label]) for r in rows]
    return got if len(got) <= 200 else got[::every]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--set", action="append", required=True, choices=sorted(SETS))
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    ap.add_argument("--mpp", type=float, help="µm per pixel of every image (default: none, as a user would run it)")
    ap.add_argument("--whole-image", action="store_true")
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    spec = ModelSpec.load(resolve_model(args.model))
    clf = OnnxClassifier(spec, device="cpu", precision=args.precision)
    params = AnalysisParams(mpp_um=args.mpp, whole_image=args.whole_image, precision=args.precision)
    report: dict[str, dict[str, int]] = {}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    details: list[tuple[str, str, str]] = []
    for name in args.set:
        counts: Counter[str] = Counter()
        by_label: dict[str, Counter[str]] = {}
        for path, label in images(args.data, name, args.every):
            try:
                call = call_of(run_analysis(path, clf, params))
            except CellviewError:
                call = "not_analysed"
            counts[call] += 1
            by_label.setdefault(label, Counter())[call] += 1
            details.append((str(path), label, call))
        report[name] = dict(counts)
        report[f"{name} by label"] = {k: dict(v) for k, v in sorted(by_label.items())}
        n = sum(counts.values())
        print(f"{spec.name} on {name} ({n} images{f', --mpp {args.mpp:g}' if args.mpp else ''}"
              f"{', --whole-image' if args.whole_image else ''}): "
              + ", ".join(f"{k} {v} ({v / n:.1%})" for k, v in counts.most_common()), flush=True)
    print(f"{time.perf_counter() - t0:.0f} s, load {load:.1f} → {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"model": spec.name, "sha256": spec.onnx_sha256, "mpp": args.mpp,
                                         "whole_image": args.whole_image, "every": args.every,
                                         "sets": report, "images": details}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
