"""Patient-grouped k-fold cross-validation of the shipped colon-he recipe: linear head, then fine-tuning.

The shipped model (``models/colon-he``) was trained as ``cellview train --recipe colon-he --out
out/train/colon-he-ft2 --views 6 --finetune-blocks 2 --finetune-epochs 3``. This script repeats that
recipe once per fold of the same patient-grouped folds ``cellview evaluate`` uses for its linear-probe
cross-validation (``group_split(labels, groups, [1] * k, seed)``): fold k is the test set, fold
(k + 1) % k the validation set (it picks the head's epoch, the fine-tuning epoch and the temperature,
as the validation split does in the shipped run), the rest is trained on.

It reuses the shipped run's cached trunk activations (the same augmented views and evaluation tiles)
and the library's own ``train_linear`` / ``finetune`` / ``fit_temperature`` / ``image_probs``. The
head is trained on the pretrained tail's pooled features, computed once for all folds (``fit_head``
computes the same thing per call). Results are image level (mean of tile probabilities) out of fold.

    TQDM_DISABLE=1 nice -n 10 python scripts/cv_colon_finetune.py            # all folds
    TQDM_DISABLE=1 nice -n 10 python scripts/cv_colon_finetune.py --only 0   # one fold (timing)

Finished folds are kept under ``<out>/colon_finetune_folds/fold<k>/`` and reused by a later call
with the same settings; the JSON and markdown summaries are written once every fold is done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellview.model import CATEGORIES
from cellview.train.metrics import balanced_accuracy, confusion, fit_temperature, image_probs, to_categories
from cellview.train.splits import group_split
from cellview.train.train import (
    Run,
    build_model,
    finetune,
    pooled,
    sample_weights,
    save_npy,
    seed_everything,
    train_linear,
)

EPOCH_LINE = re.compile(r"fine-tune epoch (\d+): val balanced accuracy ([0-9.]+)")


class _Tee:
    """stderr that is also scanned for the fine-tuning epoch scores ``finetune`` prints."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.scores = stream, {}

    def write(self, s: str) -> int:
        for m in EPOCH_LINE.finditer(s):
            self.scores[int(m.group(1))] = float(m.group(2))
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pretrained_pooled(run: Run, recipe: Any, cfg: Any, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """Cached views/tiles through the pretrained (not yet fine-tuned) tail: what ``fit_head`` trains on."""
    paths = [work / "pooled_pretrained_train.npy", work / "pooled_pretrained_eval.npy"]
    if all(p.exists() for p in paths):
        return np.load(paths[0]), np.load(paths[1])
    t = time.time()
    seed_everything(cfg.seed)
    bb, _ = build_model(recipe, cfg)
    out = []
    for name, path in zip(("train", "eval"), paths, strict=True):
        feats, _ = run.features(name)
        x = pooled(bb.tail, feats, cfg.finetune_blocks, "cpu")
        save_npy(path, x)
        out.append(x)
        say(f"pooled {name}: {x.shape} ({time.time() - t:.0f} s so far)")
    return out[0], out[1]


def metrics(probs: np.ndarray, labels: np.ndarray, cats: list[str]) -> dict[str, Any]:
    cp, cy = to_categories(probs, labels, cats)
    pred = cp.argmax(1)
    return {
        "n": int(len(labels)),
        "category_balanced_accuracy": round(balanced_accuracy(cy, pred), 4),
        "category_accuracy": round(float((pred == cy).mean()), 4),
        "class_balanced_accuracy": round(balanced_accuracy(labels, probs.argmax(1)), 4),
        "class_accuracy": round(float((probs.argmax(1) == labels).mean()), 4),
        "category_confusion": confusion(cy, pred, len(CATEGORIES)).tolist(),
    }


def by_source(probs: np.ndarray, labels: np.ndarray, sources: np.ndarray, cats: list[str]) -> dict[str, Any]:
    out = {"all": metrics(probs, labels, cats)}
    for src in sorted(set(sources.tolist())):
        m = sources == src
        out[src] = metrics(probs[m], labels[m], cats)
    return out


def run_fold(k: int, folds: int, fold: np.ndarray, shipped: Run, work: Path, cfg: Any, recipe: Any,
             samples: list, labels: np.ndarray, sources: np.ndarray, ptx: np.ndarray, pex: np.ndarray,
             signature: dict[str, Any]) -> dict[str, Any]:
    fdir = work / f"fold{k}"
    result_path = fdir / "result.npz"
    sig_path = fdir / "signature.json"
    if sig_path.exists() and json.loads(sig_path.read_text()) != signature:
        say(f"fold {k}: settings changed, starting it again")
        shutil.rmtree(fdir)
    fdir.mkdir(parents=True, exist_ok=True)
    sig_path.write_text(json.dumps(signature, indent=2) + "\n")
    if result_path.exists():
        say(f"fold {k}: reusing {result_path}")
        return dict(np.load(result_path, allow_pickle=False))

    t0 = time.time()
    _, ti = shipped.features("train")
    ef, ei = shipped.features("eval")
    sp = np.where(fold == k, 2, np.where(fold == (k + 1) % folds, 1, 0))
    tr, va, te = sp[ti] == 0, sp[ei] == 1, sp[ei] == 2
    say(f"fold {k}: train {int((sp == 0).sum())} images / {int(tr.sum())} views, val {int((sp == 1).sum())} images, "
        f"test {int((sp == 2).sum())} images ({int(((sp == 2) & (sources == 'glas')).sum())} GlaS)")

    # 1. linear head on the pretrained tail's features (as fit_head), epoch picked on validation images
    seed_everything(cfg.seed)
    y = labels[ti[tr]]
    head = train_linear(ptx[tr], y, sample_weights(y, sources[ti[tr]], cfg.balance), len(recipe.classes), cfg,
                        (pex[va], ei[va], labels), None, f"fold {k} head")
    with torch.inference_mode():
        lin_val = head(torch.from_numpy(pex[va])).numpy()
        lin_test = head(torch.from_numpy(pex[te])).numpy()
    t_lin = fit_temperature(lin_val, labels[ei[va]], ei[va])
    t_head = time.time() - t0
    say(f"fold {k}: linear head in {t_head:.0f} s (val temperature {t_lin:.3f})")

    # 2. fine-tune the last blocks + head from that head (run_training's order), best epoch by validation
    seed_everything(cfg.seed)
    _, model = build_model(recipe, cfg)
    model.fc = head
    fold_run = Run(fdir)
    fold_run.cache = shipped.cache  # cached trunk activations; finetune.ckpt goes to fdir (resumable)
    tee = _Tee(sys.stderr)
    with contextlib.redirect_stderr(tee):
        finetune(fold_run, model, samples, sp, cfg, "cpu")
    val_scores = [tee.scores.get(e, float("nan")) for e in range(1, cfg.finetune_epochs + 1)]
    with torch.inference_mode():
        ft_val = model.fc(torch.from_numpy(pooled(model.tail, ef[va], cfg.finetune_blocks, "cpu"))).numpy()
        ft_test = model.fc(torch.from_numpy(pooled(model.tail, ef[te], cfg.finetune_blocks, "cpu"))).numpy()
    t_ft = fit_temperature(ft_val, labels[ei[va]], ei[va])
    seconds = time.time() - t0
    say(f"fold {k}: fine-tuned, val scores by epoch {val_scores}, temperature {t_ft:.3f}; fold took {seconds:.0f} s")

    res: dict[str, Any] = {"seconds": seconds, "head_seconds": t_head, "temperature_ft": t_ft,
                           "temperature_lin": t_lin, "val_scores": np.array(val_scores)}
    for name, lg, t in (("ft_cal", ft_test, t_ft), ("ft_raw", ft_test, 1.0),
                        ("lin_raw", lin_test, 1.0), ("lin_cal", lin_test, t_lin)):
        probs, ids = image_probs(lg, ei[te], t)
        res[name] = probs
        res["ids"] = ids
    np.savez(result_path, **res)
    (fdir / "finetune.ckpt").unlink(missing_ok=True)  # done: the result is kept, the 20 MB checkpoint is not
    return res


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# colon-he: patient-grouped cross-validation of the shipped recipe (head + fine-tuning)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"- Recipe repeated per fold: `{report['shipped_recipe']}` — {cfg['views']} augmented views per tile-area "
        f"(cached from the shipped run), linear head {cfg['head_epochs']} epochs lr {cfg['head_lr']} wd "
        f"{cfg['weight_decay']}, then the last {cfg['finetune_blocks']} blocks + head fine-tuned "
        f"{cfg['finetune_epochs']} epochs lr {cfg['finetune_lr']} (head ×3), batch {cfg['batch_size']}, "
        f"balance `{cfg['balance']}`, seed {cfg['seed']}, cpu, {report['threads']} threads.",
        f"- Reductions against the shipped run: {report['reductions']}",
        f"- Folds: {report['folds']} patient-grouped folds (`group_split(labels, patient groups, [1]*{report['folds']}, "
        f"seed {cfg['seed']})`, the folds of `cellview evaluate`'s linear-probe CV); fold k = test, fold (k+1)%"
        f"{report['folds']} = validation (picks the head epoch, the fine-tune epoch and the temperature), the rest = "
        "train. Every image is tested once with its patient unseen in training.",
        "- Image level = mean of tile probabilities; categories = class probabilities summed per category. "
        "Headline fine-tune figures use the temperature fitted on each fold's validation images (as the shipped "
        "model does); T = 1 figures are in the JSON and below.",
        f"- Wall time: {report['wall_seconds_this_call']:.0f} s this call; compute {report['compute_seconds']:.0f} s "
        f"in all (pooled features {report['pooled_seconds']:.0f} s + folds "
        + ", ".join(f"{s:.0f}" for s in report["fold_seconds"]) + " s).",
        "",
        "## Out-of-fold results",
        "",
        "| model | set | n | category bal. acc. | category acc. | class bal. acc. |",
        "|---|---|---|---|---|---|",
    ]
    for key, title in (("finetune_calibrated", "head + fine-tune (shipped recipe, T from val)"),
                       ("finetune_T1", "head + fine-tune, T = 1"),
                       ("linear_T1", "linear head only, T = 1"),
                       ("linear_calibrated", "linear head only, T from val")):
        for src in ("glas", "ebhi_seg", "all"):
            m = report["oof"][key][src]
            lines.append(f"| {title} | {src} | {m['n']} | {m['category_balanced_accuracy']:.3f} | "
                         f"{m['category_accuracy']:.3f} | {m['class_balanced_accuracy']:.3f} |")
    lines += ["", "## GlaS category confusion (rows true, columns predicted: malignant / benign / normal)", ""]
    for key in ("finetune_calibrated", "linear_T1"):
        lines.append(f"{key}:")
        lines.append("")
        lines.append("| true \\ pred | malignant | benign | normal |")
        lines.append("|---|---|---|---|")
        for name, row in zip(CATEGORIES, report["oof"][key]["glas"]["category_confusion"], strict=True):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        lines.append("")
    lines += ["## Per fold (head + fine-tune, T from val)", "",
              "| fold | GlaS test n | GlaS cat. bal. acc. | GlaS acc. | EBHI cat. bal. acc. | EBHI acc. | val score by epoch | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for f in report["per_fold"]:
        g, e = f["finetune_calibrated"].get("glas"), f["finetune_calibrated"].get("ebhi_seg")
        gtxt = f"{g['n']} | {g['category_balanced_accuracy']:.3f} | {g['category_accuracy']:.3f}" if g else "0 | – | –"
        lines.append(f"| {f['fold']} | {gtxt} | {e['category_balanced_accuracy']:.3f} | {e['category_accuracy']:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in f['val_scores'])} | {f['seconds']:.0f} |")
    lines += ["", "Balanced accuracy of a fold's GlaS images is over the categories present in that fold only; "
              "the pooled out-of-fold figures above are the ones to quote.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="out/train/colon-he-ft2", help="the shipped run folder (cache, samples, config)")
    ap.add_argument("--out", default="out/cv")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only", type=int, nargs="*", help="run only these folds (timing); no summary is written")
    ap.add_argument("--finetune-epochs", type=int, help="reduction: fewer fine-tuning epochs than the shipped run")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    t_call = time.time()
    torch.set_num_threads(args.threads)
    shipped = Run(Path(args.run))
    recipe, cfg = shipped.recipe(), shipped.config()
    summary = shipped.load_json("summary.json")
    reductions = []
    if args.finetune_epochs and args.finetune_epochs != cfg.finetune_epochs:
        reductions.append(f"fine-tuning epochs {cfg.finetune_epochs} → {args.finetune_epochs}")
        cfg = replace(cfg, finetune_epochs=args.finetune_epochs)
    samples, _ = shipped.samples()
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    cats = [c.category for c in recipe.classes]
    fold = group_split(labels, [s.group for s in samples], [1.0] * args.folds, cfg.seed)

    work = Path(args.out) / "colon_finetune_folds"
    work.mkdir(parents=True, exist_ok=True)
    t = time.time()
    ptx, pex = pretrained_pooled(shipped, recipe, cfg, work)
    seconds_file = work / "pooled_seconds.txt"  # the first call computed them; later calls reuse them
    if not seconds_file.exists():
        seconds_file.write_text(f"{time.time() - t:.1f}\n")
    pooled_seconds = float(seconds_file.read_text())

    signature = {"run": str(shipped.path), "config": asdict(cfg), "folds": args.folds}
    todo = args.only if args.only else list(range(args.folds))
    results = {}
    for k in todo:
        results[k] = run_fold(k, args.folds, fold, shipped, work, cfg, recipe, samples, labels, sources, ptx, pex,
                              signature)
    if args.only:
        say(f"folds {todo} done in {time.time() - t_call:.0f} s (this call); no summary written for a partial run")
        return

    oof = {key: np.full((len(samples), len(recipe.classes)), np.nan) for key in ("ft_cal", "ft_raw", "lin_raw", "lin_cal")}
    per_fold = []
    for k in range(args.folds):
        r = results[k]
        ids = r["ids"].astype(np.int64)
        for key in oof:
            oof[key][ids] = r[key]
        per_fold.append({
            "fold": k, "seconds": round(float(r["seconds"]), 1), "test_images": int(len(ids)),
            "glas_patients": sorted({samples[i].group for i in ids if sources[i] == "glas"}),
            "val_scores": [round(float(v), 4) for v in r["val_scores"]],
            "temperature_finetune": float(r["temperature_ft"]), "temperature_linear": float(r["temperature_lin"]),
            "finetune_calibrated": by_source(r["ft_cal"], labels[ids], sources[ids], cats),
            "linear_T1": by_source(r["lin_raw"], labels[ids], sources[ids], cats),
        })
    assert not np.isnan(oof["ft_cal"]).any(), "some image was never tested"
    fold_seconds = [f["seconds"] for f in per_fold]
    report = {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "shipped_run": str(shipped.path),
        "shipped_recipe": summary.get("command"),
        "config": asdict(cfg),
        "threads": args.threads,
        "reductions": "; ".join(reductions) or "none (same cached views, epochs, learning rates and seed)",
        "folds": args.folds,
        "fold_assignment": "cellview.train.splits.group_split(labels, patient groups, [1.0]*folds, seed)",
        "validation": "fold (k+1) % folds picks the head epoch, the fine-tuning epoch and the temperature",
        "image_level": "mean of tile probabilities; categories = class probabilities summed per category",
        "glas_images": int((sources == "glas").sum()),
        "glas_patients": len({s.group for s in samples if s.source == "glas"}),
        "pooled_seconds": round(pooled_seconds, 1),
        "fold_seconds": fold_seconds,
        "compute_seconds": round(pooled_seconds + sum(fold_seconds), 1),
        "wall_seconds_this_call": round(time.time() - t_call, 1),
        "oof": {
            "finetune_calibrated": by_source(oof["ft_cal"], labels, sources, cats),
            "finetune_T1": by_source(oof["ft_raw"], labels, sources, cats),
            "linear_T1": by_source(oof["lin_raw"], labels, sources, cats),
            "linear_calibrated": by_source(oof["lin_cal"], labels, sources, cats),
        },
        "per_fold": per_fold,
    }
    out = Path(args.out)
    (out / "colon_finetune_cv.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "colon_finetune_cv.md").write_text(markdown(report))
    for key in ("finetune_calibrated", "linear_T1"):
        m = report["oof"][key]
        say(f"{key}: " + "; ".join(f"{s} cat bal {m[s]['category_balanced_accuracy']:.3f} acc "
                                    f"{m[s]['category_accuracy']:.3f}" for s in ("glas", "ebhi_seg", "all")))
    say(f"written {out / 'colon_finetune_cv.json'} and {out / 'colon_finetune_cv.md'}")


if __name__ == "__main__":
    main()
