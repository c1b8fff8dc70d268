"""What the out-of-domain score costs: the same slide with a model before and after it got domain statistics.

    python bench/domain_overhead.py SLIDE --model colon-he --baseline OLD_MODEL.onnx [--repeat 3] [--device cpu]

``--baseline`` is the model as it was before ``cellview domain upgrade`` (logits output only, no
``domain.npz``), e.g. ``git show 56c4acc:models/colon-he/model.onnx > /tmp/old/model.onnx`` plus
its sidecar. Runs are interleaved (baseline, new, baseline, new, …) so both see the same load;
the best of ``--repeat`` is printed. Figures only, no assertions:

- inference only: baseline logits; the new graph fetching logits only (what a model without
  domain statistics does); the new graph fetching logits + features and scoring the domain
  (features distance + pixel checks, as ``OnnxClassifier.classify``);
- pixel checks alone (``domain.tile_quality``), which the pipeline runs in its reader threads;
- end to end (``run_analysis``, no cache).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.analysis.classifier import OnnxClassifier  # noqa: E402
from cellview.analysis.domain import tile_quality  # noqa: E402
from cellview.analysis.model_lookup import resolve_model  # noqa: E402
from cellview.analysis.model_spec import ModelSpec  # noqa: E402
from cellview.analysis.pipeline import TileReaders, batch_indices, plan_tiles, run_analysis  # noqa: E402
from cellview.analysis.results import AnalysisParams  # noqa: E402
from cellview.slides.opening import open_slide  # noqa: E402


def read_batches(slide_path: Path, spec: ModelSpec, params: AnalysisParams, limit: int) -> list[np.ndarray]:
    slide = open_slide(slide_path, mpp_um=params.mpp_um)
    _, grid = plan_tiles(slide, spec, params)
    batches = batch_indices(min(grid.n_tiles, limit), params.batch_size)
    readers = TileReaders(slide, grid, batches, params.workers)
    out = []
    try:
        for _ in batches:
            item = readers.queue.get()
            if isinstance(item, BaseException):
                raise item
            out.append(item.tiles)
    finally:
        readers.close()
        slide.close()
    return out


def rate(fn, batches: list[np.ndarray]) -> float:
    fn(batches[0])  # warm-up
    n = 0
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
        n += len(b)
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", type=Path)
    ap.add_argument("--model", default="colon-he", help="the model with domain statistics")
    ap.add_argument("--baseline", required=True, help="the same model before the upgrade (.onnx with sidecar)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tiles", type=int, default=256, help="tiles for the inference-only figures")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mpp", type=float)
    args = ap.parse_args()

    new = OnnxClassifier(ModelSpec.load(resolve_model(args.model)), device=args.device, max_batch=args.batch_size)
    old = OnnxClassifier(ModelSpec.load(args.baseline), device=args.device, max_batch=args.batch_size)
    if not new.has_domain or old.has_domain:
        print("--model needs domain statistics and --baseline must have none", file=sys.stderr)
        return 2
    params = AnalysisParams(batch_size=args.batch_size, workers=args.workers, device=args.device, mpp_um=args.mpp)
    print(f"machine: {platform.node()} {platform.machine()} cores={os.cpu_count()} (shared); device {args.device}")
    print(f"slide:   {args.slide}")
    print(f"model:   {new.describe()} — {new.spec.domain.components} PCA directions; baseline {args.baseline}")
    batches = read_batches(args.slide, new.spec, params, args.tiles)
    n = sum(len(b) for b in batches)
    best: dict[str, float] = {}
    tests = {
        "baseline logits": lambda b: old.predict(b),
        "new graph, logits only": lambda b: new.predict(b),
        "new graph, logits + domain score": lambda b: new.classify(b),
        "pixel checks alone": lambda b: tile_quality(b),
    }
    for _ in range(args.repeat):
        for name, fn in tests.items():
            best[name] = max(best.get(name, 0.0), rate(fn, batches))
    print(f"\ninference only, {n} tiles, batch {args.batch_size}, best of {args.repeat} (interleaved):")
    for name, value in best.items():
        ratio = "" if name == "baseline logits" else f"  ({value / best['baseline logits']:.3f}× baseline)"
        print(f"  {name:36s} {value:8.1f} tiles/s{ratio}")

    e2e: dict[str, float] = {}
    tiles = 0
    for _ in range(args.repeat):
        for name, clf in (("baseline", old), ("with domain score", new)):
            t0 = time.perf_counter()
            result = run_analysis(args.slide, clf, params)
            tiles = result.n_done
            e2e[name] = max(e2e.get(name, 0.0), tiles / (time.perf_counter() - t0))
    print(f"\nend to end ({tiles} tiles, {args.workers} reader threads, no cache), best of {args.repeat}:")
    for name, value in e2e.items():
        ratio = "" if name == "baseline" else f"  ({value / e2e['baseline']:.3f}× baseline)"
        print(f"  {name:36s} {value:8.1f} tiles/s{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
