"""Design experiments for a model recipe, each judged by leave-one-source-out and grouped CV.

    python scripts/model_experiments.py RUN --out DIR [--only NAME ...] [--list]

RUN is a ``cellview train`` run folder whose cache holds activations entering the last N blocks
(``--cache-blocks N``), so every fine-tuning depth up to N is tried on the same cached views. Each
experiment is the run's recipe with some settings changed (``EXPERIMENTS``), trained per fold by the
same function that trains the shipped model; finished folds are kept (resumable). The colour-only
baseline (6 LAB numbers per image, a linear classifier) shows how far stain colour alone goes.
Writes DIR/<name>/protocol.json per experiment and DIR/summary.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cellview.train import data as D  # noqa: E402
from cellview.train.evaluate import evaluate_protocols  # noqa: E402
from cellview.train.protocol import PROTOCOLS, headline, make_folds, metrics  # noqa: E402
from cellview.train.train import Run, TrainConfig, sample_weights, train_linear  # noqa: E402

# name → (what it tests, settings changed from the run's recipe)
EXPERIMENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear": ("linear head on frozen features; categories equal, sources equal within a class",
               {"finetune_blocks": 0}),
    "linear_class_source": ("v1 weighting: classes equal, sources ∝ √size (normal gets 1/6 of the loss)",
                            {"finetune_blocks": 0, "balance": "class_source"}),
    "linear_source_sqrt": ("categories equal, sources ∝ √size within a class",
                           {"finetune_blocks": 0, "balance": "category_source_sqrt"}),
    "linear_source_category": ("every source the same weight, within a source every category",
                               {"finetune_blocks": 0, "balance": "source_category"}),
    "linear_smooth": ("label smoothing 0.1", {"finetune_blocks": 0, "label_smoothing": 0.1}),
    "linear_wd": ("weight decay ×10 (1e-2)", {"finetune_blocks": 0, "weight_decay": 1e-2}),
    "ft1": ("last block fine-tuned, 2 epochs", {"finetune_blocks": 1, "finetune_epochs": 2,
                                                "balance": "source_category"}),
    "ft2": ("last 2 blocks fine-tuned, 2 epochs", {"finetune_blocks": 2, "finetune_epochs": 2,
                                                   "balance": "source_category"}),
    "ft4": ("last 4 blocks fine-tuned, 2 epochs", {"finetune_blocks": 4, "finetune_epochs": 2,
                                                   "balance": "source_category"}),
    "linear_tiles": ("linear head on the analysis tiles (no augmented views; the shipped colon recipe)",
                     {"finetune_blocks": 0, "views": 0, "balance": "source_category"}),
    "ft2_tiles": ("last 2 blocks fine-tuned, 2 epochs, on the analysis tiles",
                  {"finetune_blocks": 2, "finetune_epochs": 2, "views": 0, "balance": "source_category"}),
}


def colour_baseline(run: Run, samples: list[D.Sample], recipe: D.Recipe, cfg: TrainConfig, folds: int,
                    cache: Path, protocols: tuple[str, ...] = PROTOCOLS) -> dict[str, Any]:
    """LOSO and CV of a linear classifier on 6 colour numbers per image (LAB mean and std of tissue)."""
    path = cache / "colour_features.npy"
    if path.exists():
        colour = np.load(path)
    else:
        colour = np.array([np.concatenate(D.lab_stats(D.read_rgb(s.path))) for s in samples], np.float32)
        np.save(path, colour)
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    cats = [c.category for c in recipe.classes]
    idx = np.arange(len(samples))
    report: dict[str, Any] = {}
    for protocol in protocols:
        fold_list = make_folds(samples, protocol, folds, cfg.seed)
        logits = np.zeros((len(samples), len(recipe.classes)), np.float32)
        tested = np.zeros(len(samples), bool)
        for f in fold_list:
            mu, sd = colour[f.train].mean(0), colour[f.train].std(0) + 1e-6
            x = (colour - mu) / sd
            w = sample_weights(labels[f.train], sources[f.train], cfg.balance, cats)
            head = train_linear(x[f.train], labels[f.train], w, len(recipe.classes), cfg, None, None, "colour baseline")
            with torch.no_grad():
                logits[f.test] = head(torch.from_numpy(x[f.test])).numpy()
            tested |= f.test
        report[protocol] = {"plain": metrics(logits[tested], idx[tested], tested, labels, sources,
                                             recipe.class_names, cats)}
    return report


def colour_statistics(rgb: np.ndarray) -> np.ndarray:
    """21 colour numbers of an image seen as one field (resized to 224 px): LAB 5/25/50/75/95th percentiles,
    mean and standard deviation. No shape, no texture: what a classifier could learn from look alone."""
    import cv2

    lab = cv2.cvtColor(cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2LAB)
    lab = lab.reshape(-1, 3).astype(np.float32)
    return np.concatenate([np.percentile(lab, [5, 25, 50, 75, 95], axis=0).ravel(), lab.mean(0), lab.std(0)])


def source_from_colour(samples: list[D.Sample], folds: int, seed: int, cache: Path) -> dict[str, Any]:
    """How well colour statistics alone tell each source from the others (grouped CV, balanced logistic
    regression on ``colour_statistics``): a source that is one class (blood-all's healthy blood) can then be
    told by its look, whatever the model learnt. Also the image width alone."""
    path = cache / "colour_statistics.npy"
    if path.exists():
        x = np.load(path)
    else:
        x = np.array([colour_statistics(D.read_rgb(s.path)) for s in samples], np.float32)
        np.save(path, x)
    widths = np.array([D.read_rgb(s.path).shape[1] for s in samples])
    sources = np.array([s.source for s in samples])
    fold_list = make_folds(samples, "cv", folds, seed)
    out: dict[str, Any] = {"features": "LAB percentiles 5/25/50/75/95, mean, std of the image resized to 224 px (21)"}
    for src in sorted(set(sources.tolist())):
        y = (sources == src).astype(np.float32)
        score = np.zeros(len(y))
        for f in fold_list:
            mu, sd = x[f.train].mean(0), x[f.train].std(0) + 1e-6
            xt = torch.from_numpy((x - mu) / sd)
            yt = torch.from_numpy(y[f.train])
            pos = float(yt.mean())
            w = torch.where(yt > 0, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6))
            lin = torch.nn.Linear(x.shape[1], 1)
            opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

            def closure(lin=lin, opt=opt, xt=xt, yt=yt, w=w, train=f.train) -> torch.Tensor:
                opt.zero_grad()
                logit = lin(xt[train])[:, 0]
                loss = (torch.nn.functional.binary_cross_entropy_with_logits(logit, yt, reduction="none") * w).mean()
                loss = loss + 1e-3 * (lin.weight ** 2).sum()
                loss.backward()
                return loss

            opt.step(closure)
            with torch.no_grad():
                score[f.test] = lin(xt[f.test])[:, 0].numpy()
        pred = score > 0
        pos, neg = score[y > 0], score[y == 0]
        auroc = float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
        out[src] = {"images": int(y.sum()), "recall": round(float(pred[y > 0].mean()), 4),
                    "others_called_it": int(pred[y == 0].sum()), "others": int((y == 0).sum()),
                    "balanced_accuracy": round(float((pred[y > 0].mean() + 1 - pred[y == 0].mean()) / 2), 4),
                    "auroc": round(auroc, 4),
                    "image_widths": sorted({int(v) for v in widths[y > 0]})[:3] + (["…"] if len(set(widths[y > 0])) > 3 else []),
                    "others_widths": sorted({int(v) for v in widths[y == 0]})[:3]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", help="experiment names (default: all)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS),
                    help="comma-separated: loso, cv (default both; a recipe whose sources hold different categories "
                         "has no meaningful LOSO)")
    args = ap.parse_args()
    if args.list:
        for name, (what, change) in EXPERIMENTS.items():
            print(f"{name}: {what} {change}")
        return 0
    torch.set_num_threads(args.threads)
    run = Run(args.run)
    recipe, cfg = run.recipe(), run.config()
    samples, _ = run.samples()
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    names = args.only or ["colour_only", *EXPERIMENTS]
    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    for name in names:
        t = time.time()
        if name == "source_colour":
            found = source_from_colour(samples, args.folds, cfg.seed, args.out)
            summary[name] = {"what": "each source told from the others by 21 colour numbers (grouped CV)",
                             "change": {}, "figures": found, "seconds": round(time.time() - t, 1)}
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
            print(f"{name}: {json.dumps(found)}", file=sys.stderr, flush=True)
            continue
        if name == "colour_only":
            report = colour_baseline(run, samples, recipe, cfg, args.folds, args.out, protocols)
            what, change = "6 LAB colour numbers per image, linear classifier (shortcut gauge)", {}
        else:
            what, change = EXPERIMENTS[name]
            report = evaluate_protocols(run.path, args.out / name, protocols, args.folds, (),
                                        {**change, "threads": args.threads}, work=args.out / "folds")
        h = {rule: headline(report, rule) for rule in ("vote", "mean")}
        summary[name] = {"what": what, "change": change, "headline": h, "seconds": round(time.time() - t, 1),
                         "config": {**{k: v for k, v in vars(replace(cfg, **change)).items()}}}
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{name}: " + "; ".join(f"{p} mean {h['vote'][p]['mean_over_sources']} worst {h['vote'][p]['worst_source']}"
                                      for p in PROTOCOLS if p in h["vote"]), file=sys.stderr, flush=True)
    (args.out / "summary.md").write_text(summary_markdown(summary))
    return 0


def summary_markdown(summary: dict[str, Any]) -> str:
    sources = sorted({src for v in summary.values() if "headline" in v for p in ("loso", "cv")
                      for src in v["headline"]["vote"].get(p, {}) if isinstance(v["headline"]["vote"][p][src], dict)
                      and src != "all"})
    if set(sources) != {"glas", "ebhi_seg", "lc25000_colon"}:
        return generic_markdown(summary, sources)
    lines = ["| experiment | what | LOSO glas | LOSO ebhi | LOSO lc | LOSO mean / worst | CV glas | CV ebhi | CV lc | "
             "CV normal recall (glas / ebhi) | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in summary.items():
        if "headline" not in v:
            continue
        h = v["headline"]["vote"]
        lo, cv = h.get("loso", {}), h.get("cv", {})

        def cell(d: dict[str, Any], src: str) -> str:
            return f"{d[src]['category_balanced_accuracy']:.3f}" if src in d else "–"

        def normal(src: str, cv: dict[str, Any] = cv) -> str:
            r = cv.get(src, {}).get("recall", {}).get("normal")
            return "–" if r is None else f"{r:.2f}"

        lines.append(f"| {name} | {v['what']} | {cell(lo, 'glas')} | {cell(lo, 'ebhi_seg')} | {cell(lo, 'lc25000_colon')} | "
                     f"{lo.get('mean_over_sources', '–')} / {lo.get('worst_source', '–')} | {cell(cv, 'glas')} | "
                     f"{cell(cv, 'ebhi_seg')} | {cell(cv, 'lc25000_colon')} | {normal('glas')} / {normal('ebhi_seg')} | "
                     f"{v['seconds']:.0f} |")
    return "\n".join(lines) + "\n\nImage level: confidence-weighted vote of tile categories. LC25000 has no benign images.\n"


def generic_markdown(summary: dict[str, Any], sources: list[str]) -> str:
    """One row per experiment: each protocol's category balanced accuracy per source and its recalls."""
    protocols = [p for p in PROTOCOLS if any(p in v.get("headline", {}).get("vote", {}) for v in summary.values())]
    head = [f"{p.upper()} {src}" for p in protocols for src in sources]
    lines = ["| experiment | what | " + " | ".join(head) + " | seconds |", "|---" * (len(head) + 3) + "|"]
    for name, v in summary.items():
        if "headline" not in v:
            lines.append(f"| {name} | {v['what']} | " + "; ".join(
                f"{k}: {json.dumps(f)}" for k, f in v["figures"].items() if isinstance(f, dict)) + " |" * len(head)
                + f" {v['seconds']:.0f} |")
            continue
        h = v["headline"]["vote"]
        cells = []
        for p in protocols:
            for src in sources:
                e = h.get(p, {}).get(src)
                if not isinstance(e, dict):
                    cells.append("–")
                    continue
                rec = ", ".join(f"{c} {r:.3f}" for c, r in e["recall"].items() if r is not None)
                cells.append(f"{e['category_balanced_accuracy']:.3f} ({rec})")
        lines.append(f"| {name} | {v['what']} | " + " | ".join(cells) + f" | {v['seconds']:.0f} |")
    return "\n".join(lines) + "\n\nImage level: confidence-weighted vote of tile categories; recalls per category.\n"


if __name__ == "__main__":
    sys.exit(main())
