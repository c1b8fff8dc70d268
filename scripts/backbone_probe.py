"""Which backbone: a linear head on each backbone's frozen features, judged by LOSO and grouped CV.

    python scripts/backbone_probe.py RUN --out DIR [--arch efficientnet-lite0 efficientnet-lite1 ...]

Every backbone sees the same tiles (the analysis tiles ``cellview analyze`` classifies for each image
of the run), the same folds (``cellview evaluate``'s leave-one-source-out and patient / source-group
5-fold CV), the same loss weights and epochs as the run's recipe, and the same image-level rules.
Augmented training views are left out so that a backbone costs one pass over the tiles, not one per
view: the figures compare backbones with each other, not with the shipped model's card. Features are
cached in DIR (resumable); writes DIR/backbones.json and DIR/backbones.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.train.backbone import FeatureRunner, build_backbone  # noqa: E402
from cellview.train.protocol import PROTOCOLS, make_folds, metrics  # noqa: E402
from cellview.train.train import Run, _tiles_for, extract, sample_weights, train_linear  # noqa: E402


def features(run: Run, arch: str, out: Path, threads: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Pooled frozen features of every analysis tile of the run's images, and the seconds they took."""
    path = out / f"{arch}_tiles.npz"
    if path.exists():
        with np.load(path) as z:
            return z["features"].astype(np.float32), z["index"], float(z["seconds"])
    recipe = run.recipe()
    samples, _ = run.samples()
    t = time.time()
    bb = build_backbone(arch, recipe.patch_size, 0, pretrained=True)
    runner = FeatureRunner(bb, recipe.patch_size, out, "cpu", threads)
    feats, index = extract(samples, lambda _, s: _tiles_for(s, recipe), runner, f"{arch}: analysis tiles")
    seconds = time.time() - t
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=feats, index=index, seconds=seconds)
    tmp.replace(path)
    return feats.astype(np.float32), index, seconds


def probe(run: Run, feats: np.ndarray, index: np.ndarray) -> dict[str, dict]:
    recipe, cfg = run.recipe(), run.config()
    samples, _ = run.samples()
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    cats = [c.category for c in recipe.classes]
    report: dict[str, dict] = {}
    for protocol in PROTOCOLS:
        logits = np.zeros((len(feats), len(recipe.classes)), np.float32)
        tested_tiles = np.zeros(len(feats), bool)
        tested = np.zeros(len(samples), bool)
        for fold in make_folds(samples, protocol, 5, cfg.seed):
            tr, te = fold.train[index], fold.test[index]
            w = sample_weights(labels[index[tr]], sources[index[tr]], cfg.balance, cats)
            torch.manual_seed(cfg.seed)
            head = train_linear(feats[tr], labels[index[tr]], w, len(recipe.classes), cfg, None, None,
                                f"{protocol} {fold.name}")
            with torch.no_grad():
                logits[te] = head(torch.from_numpy(feats[te])).numpy()
            tested_tiles |= te
            tested |= fold.test
        report[protocol] = metrics(logits[tested_tiles], index[tested_tiles], tested, labels, sources,
                                   recipe.class_names, cats)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arch", nargs="+", default=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(args.run)
    results = {}
    for arch in args.arch:
        feats, index, seconds = features(run, arch, args.out, args.threads)
        rep = probe(run, feats, index)
        results[arch] = {"tiles": len(feats), "feature_seconds": round(seconds, 1), "report": rep}
        line = []
        for protocol in PROTOCOLS:
            per = {k: v["vote"]["category_balanced_accuracy"] for k, v in rep[protocol].items() if k != "all"}
            line.append(f"{protocol} " + ", ".join(f"{k} {v:.3f}" for k, v in per.items())
                        + f" (mean {np.mean(list(per.values())):.3f}, worst {min(per.values()):.3f})")
        print(f"{arch}: {len(feats)} tiles in {seconds:.0f} s; " + "; ".join(line), file=sys.stderr, flush=True)
        (args.out / "backbones.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    rows = ["| backbone | protocol | " + " | ".join(["source", "cat. bal. acc.", "recall malignant", "recall benign",
                                                   "recall normal"]) + " |", "|---|---|---|---|---|---|---|"]
    for arch, r in results.items():
        for protocol in PROTOCOLS:
            for src, v in r["report"][protocol].items():
                vote = v["vote"]
                rec = vote["category_recall"]
                fmt = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
                rows.append(f"| {arch} | {protocol} | {src} | {vote['category_balanced_accuracy']:.3f} | "
                            f"{fmt(rec.get('malignant'))} | {fmt(rec.get('benign'))} | {fmt(rec.get('normal'))} |")
    (args.out / "backbones.md").write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
