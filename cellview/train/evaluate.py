"""``cellview evaluate``: honest numbers for a run's recipe.

``evaluate_protocols``: leave-one-source-out and grouped k-fold cross-validation, retraining the recipe
per fold on the cached features (``cellview.train.protocol``), optionally with stain-normalised and
test-time-augmented variants of the held-out tiles. ``evaluate_run``: a run trained with a held-out
grouped test split is also scored on it — accuracy, balanced accuracy, a classification report,
confusion matrices and calibration (ECE, reliability diagram, before and after temperature scaling),
plus the checks that catch shortcuts: per-source accuracy, a stain-normalised re-run, a colour-only
baseline, the leaky random-split figure next to the grouped one, and grouped CV of the linear head.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cellview.analysis.classifier import probabilities
from cellview.analysis.model_spec import CATEGORIES
from cellview.base.files import atomic_write_bytes, atomic_write_text
from cellview.train import data as D
from cellview.train.metrics import (
    balanced_accuracy,
    confusion,
    image_probs,
    summarise,
    to_categories,
)
from cellview.train.protocol import PROTOCOLS, headline, make_folds, markdown_tables, protocol_report, run_folds
from cellview.train.splits import SPLITS, group_split
from cellview.train.train import (
    Run,
    _json_default,
    _tiles_for,
    load_model,
    pooled,
    sample_weights,
    tile_logits_from_cache,
    train_linear,
)

# ----------------------------------------------------------------------------- plots (OpenCV, no matplotlib)


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float = 0.45, color: tuple[int, ...] = (0, 0, 0),
          thick: int = 1) -> None:
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


def plot_confusion(m: np.ndarray, names: list[str], title: str, path: Path) -> None:
    n = len(names)
    cell, left, top = 80, 190, 70
    img = np.full((top + n * cell + 150, left + n * cell + 20, 3), 255, np.uint8)
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    _text(img, title, (10, 25), 0.55, thick=1)
    _text(img, "rows: true class, columns: predicted; colour = row fraction", (10, 50), 0.4, (80, 80, 80))
    for i in range(n):
        for j in range(n):
            v = rows[i, j]
            colour = tuple(int(255 - v * (255 - c)) for c in (180, 80, 30))  # BGR blue ramp
            x0, y0 = left + j * cell, top + i * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), colour, -1)
            cv2.rectangle(img, (x0, y0), (x0 + cell, y0 + cell), (200, 200, 200), 1)
            ink = (255, 255, 255) if v > 0.55 else (0, 0, 0)
            _text(img, str(int(m[i, j])), (x0 + 10, y0 + 35), 0.6, ink, 2)
            _text(img, f"{v:.2f}", (x0 + 10, y0 + 60), 0.42, ink)
        _text(img, names[i][:24], (8, top + i * cell + 45), 0.42)
    for j in range(n):
        org = (left + j * cell + 5, top + n * cell + 15)
        for k, part in enumerate([names[j][i:i + 11] for i in range(0, len(names[j]), 11)][:3]):
            _text(img, part, (org[0], org[1] + 15 * k), 0.38)
    _write_png(path, img)


def plot_reliability(tables: dict[str, list[dict[str, float]]], eces: dict[str, float], title: str, path: Path) -> None:
    size, pad = 360, 60
    img = np.full((size + 2 * pad + 30, size + 2 * pad + 150, 3), 255, np.uint8)

    def xy(c: float, a: float) -> tuple[int, int]:
        return int(pad + c * size), int(pad + 20 + (1 - a) * size)

    cv2.rectangle(img, xy(0, 1), xy(1, 0), (0, 0, 0), 1)
    cv2.line(img, xy(0, 0), xy(1, 1), (150, 150, 150), 1, cv2.LINE_AA)
    for k in range(0, 11, 2):
        _text(img, f"{k / 10:.1f}", (xy(k / 10, 0)[0] - 10, xy(0, 0)[1] + 18), 0.35)
        _text(img, f"{k / 10:.1f}", (pad - 30, xy(0, k / 10)[1] + 4), 0.35)
    _text(img, title, (10, 22), 0.5)
    _text(img, "confidence", (pad + size // 2 - 35, size + pad + 45), 0.4)
    _text(img, "accuracy", (5, pad + 10), 0.4)
    colours = [(40, 39, 214), (180, 119, 31), (44, 160, 44)]
    for k, (name, table) in enumerate(tables.items()):
        col = colours[k % 3]
        pts = [xy(b["confidence"], b["accuracy"]) for b in table]
        for b, p in zip(table, pts, strict=True):
            cv2.circle(img, p, 3 + int(min(6, np.sqrt(b["n"]) / 3)), col, -1, cv2.LINE_AA)
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, col, 1, cv2.LINE_AA)
        _text(img, f"{name}: ECE {eces[name]:.3f}", (size + pad + 8, pad + 30 + 22 * k), 0.4, col)
    _write_png(path, img)


def _write_png(path: Path, bgr: np.ndarray) -> None:
    """Same bytes as ``cv2.imwrite``, written atomically like eval.json."""
    atomic_write_bytes(path, cv2.imencode(".png", bgr)[1].tobytes())


# ----------------------------------------------------------------------------- running a run's model


def _onnx_session(model: Any, patch: int, workdir: Path) -> Any:
    from cellview.train.backbone import cpu_session, export_onnx

    path = workdir / "eval_model.onnx"
    export_onnx(model.eval(), path, patch)
    return cpu_session(path)


def _image_logits(session: Any, samples: list[D.Sample], recipe: D.Recipe, transform: Any) -> tuple[np.ndarray, np.ndarray]:
    logits, index = [], []
    for i, s in enumerate(samples):
        tiles = _tiles_for(s, recipe, transform)
        logits.append(session.run(None, {"tiles": tiles})[0])
        index.append(np.full(len(tiles), i))
    return np.concatenate(logits), np.concatenate(index)


def _linear_features(run: Any, recipe: D.Recipe, cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frozen ImageNet features of the cached views/tiles (through the pretrained tail when fine-tuned)."""
    from cellview.train.backbone import build_backbone
    from cellview.train.train import train_set

    tf, ti = run.features(train_set(cfg))
    ef, ei = run.features("eval")
    if cfg.cache_depth == 0:
        return np.asarray(tf, np.float32), ti, np.asarray(ef, np.float32), ei
    tail = build_backbone(cfg.arch, recipe.patch_size, cfg.cache_depth, pretrained=True).tail
    return pooled(tail, tf, cfg.cache_depth, "cpu"), ti, pooled(tail, ef, cfg.cache_depth, "cpu"), ei


def linear_probe(train_x: np.ndarray, train_i: np.ndarray, eval_x: np.ndarray, eval_i: np.ndarray,
                 split: np.ndarray, labels: np.ndarray, sources: np.ndarray, cfg: Any, n_classes: int,
                 test_id: int = 2, class_categories: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train a linear head on split 0 (val 1 picks the epoch) and return image probs on ``test_id``."""

    tr = split[train_i] == 0
    va = split[eval_i] == 1
    te = split[eval_i] == test_id
    if not tr.any():
        return image_probs(np.zeros((int(te.sum()), n_classes)), eval_i[te], 1.0)
    w = sample_weights(labels[train_i[tr]], sources[train_i[tr]], cfg.balance, class_categories)
    head = train_linear(train_x[tr], labels[train_i[tr]], w, n_classes, cfg, (eval_x[va], eval_i[va], labels) if va.any() else None, None, "probe")
    with torch.no_grad():
        logits = head(torch.from_numpy(eval_x[te])).numpy()
    return image_probs(logits, eval_i[te], 1.0)


def evaluate_run(run_dir: Path, out_dir: Path | None = None, extra_checks: bool = True, cv_folds: int = 5) -> dict[str, Any]:
    t0 = time.time()
    run = Run(run_dir)
    out_dir = Path(out_dir or run.path / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe, cfg, model, state = load_model(run)
    samples, split = run.samples()
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    names, cats = recipe.class_names, [c.category for c in recipe.classes]
    temperature = float(state["temperature"])
    logits, tile_sample = tile_logits_from_cache(run, model, cfg.cache_depth, 2, split)
    y_tile = labels[tile_sample]
    res: dict[str, Any] = {"model": recipe.name, "temperature": temperature, "test_images": int((split == 2).sum()),
                           "test_groups": len({s.group for s, k in zip(samples, split, strict=True) if k == 2}),
                           "test_tiles": int(len(tile_sample))}
    cat_present = [c for c in CATEGORIES if c in cats]
    for tag, t in (("uncalibrated", 1.0), ("calibrated", temperature)):
        probs, ids = image_probs(logits, tile_sample, t)
        y = labels[ids]
        res[f"image_{tag}"] = summarise(probs, y, names)
        cp, cy = to_categories(probs, y, cats)
        keep = [CATEGORIES.index(c) for c in cat_present]
        remap = {c: i for i, c in enumerate(keep)}
        res[f"category_{tag}"] = summarise(cp[:, keep], np.array([remap[v] for v in cy]), cat_present)
        tp = probabilities(logits, "softmax", t)
        res[f"tile_{tag}"] = {k: v for k, v in summarise(tp, y_tile, names).items() if k in ("n", "accuracy", "balanced_accuracy", "ece")}
    probs, ids = image_probs(logits, tile_sample, temperature)
    cp, cy = to_categories(probs, labels[ids], cats)
    per_source = {}
    for src in sorted(set(sources[ids])):
        m = sources[ids] == src
        per_source[src] = {
            "n": int(m.sum()),
            "category_accuracy": round(float((cp[m].argmax(1) == cy[m]).mean()), 4),
            "category_balanced_accuracy": round(balanced_accuracy(cy[m], cp[m].argmax(1)), 4),
            "class_accuracy": round(float((probs[m].argmax(1) == labels[ids][m]).mean()), 4),
        }
    res["per_source"] = per_source
    res["headline"] = {
        "category_balanced_accuracy": res["category_calibrated"]["balanced_accuracy"],
        "category_accuracy": res["category_calibrated"]["accuracy"],
        "class_balanced_accuracy": res["image_calibrated"]["balanced_accuracy"],
        "ece_before": res["image_uncalibrated"]["ece"],
        "ece_after": res["image_calibrated"]["ece"],
        "ece_categories_before": res["category_uncalibrated"]["ece"],
        "ece_categories_after": res["category_calibrated"]["ece"],
        "ece_tiles_before": res["tile_uncalibrated"]["ece"],
        "ece_tiles_after": res["tile_calibrated"]["ece"],
    }
    plot_confusion(np.array(res["category_calibrated"]["confusion"]), cat_present,
                   f"{recipe.name}: categories, grouped test split (n={len(ids)})", out_dir / "confusion_categories.png")
    plot_confusion(np.array(res["image_calibrated"]["confusion"]), names,
                   f"{recipe.name}: classes, grouped test split (n={len(ids)})", out_dir / "confusion_classes.png")
    plot_reliability({"before (T=1)": res["image_uncalibrated"]["reliability"],
                      f"after (T={temperature:.2f})": res["image_calibrated"]["reliability"]},
                     {"before (T=1)": res["image_uncalibrated"]["ece"],
                      f"after (T={temperature:.2f})": res["image_calibrated"]["ece"]},
                     f"{recipe.name}: reliability (top class, test images)", out_dir / "reliability.png")

    if extra_checks:
        res["checks"] = _checks(run, recipe, cfg, model, samples, split, labels, sources, cats, temperature, cv_folds)
    res["eval_seconds"] = round(time.time() - t0, 1)

    atomic_write_text(out_dir / "eval.json", json.dumps(res, indent=2, default=_json_default) + "\n")
    print(f"test: balanced accuracy (categories) {res['headline']['category_balanced_accuracy']:.3f}, "
          f"(classes) {res['headline']['class_balanced_accuracy']:.3f}; ECE {res['headline']['ece_before']:.3f} → "
          f"{res['headline']['ece_after']:.3f}; written to {out_dir}", file=sys.stderr)
    return res


def _cat_bal(probs: np.ndarray, y: np.ndarray, cats: list[str]) -> float:
    cp, cy = to_categories(probs, y, cats)
    return round(balanced_accuracy(cy, cp.argmax(1)), 4)


def _checks(run: Any, recipe: D.Recipe, cfg: Any, model: Any, samples: list[D.Sample], split: np.ndarray,
            labels: np.ndarray, sources: np.ndarray, cats: list[str], temperature: float, folds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = run.load_json("samples.json")
    leaky = np.array([SPLITS.index(r["leaky_split"]) for r in rows])
    n_classes = len(recipe.classes)
    tx, ti, ex, ei = _linear_features(run, recipe, cfg)
    for name, sp in (("grouped", split), ("leaky_random", leaky)):
        probs, ids = linear_probe(tx, ti, ex, ei, sp, labels, sources, cfg, n_classes, class_categories=cats)
        out[f"linear_probe_{name}_split"] = {
            "class_balanced_accuracy": round(balanced_accuracy(labels[ids], probs.argmax(1)), 4),
            "category_balanced_accuracy": _cat_bal(probs, labels[ids], cats),
            "accuracy": round(float((probs.argmax(1) == labels[ids]).mean()), 4),
        }
    if folds > 1:
        fold = group_split(labels, [s.group for s in samples], [1.0] * folds, cfg.seed)
        oof = np.zeros((len(samples), n_classes))
        for k in range(folds):
            val_fold = (k + 1) % folds if folds > 2 else -1
            sp = np.where(fold == k, 2, np.where(fold == val_fold, 1, 0))
            probs, ids = linear_probe(tx, ti, ex, ei, sp, labels, sources, cfg, n_classes, class_categories=cats)
            oof[ids] = probs
        cv: dict[str, Any] = {"folds": folds, "all": {"category_balanced_accuracy": _cat_bal(oof, labels, cats),
                                                       "class_balanced_accuracy": round(balanced_accuracy(labels, oof.argmax(1)), 4)}}
        for src in sorted(set(sources)):
            m = sources == src
            cp, cy = to_categories(oof[m], labels[m], cats)
            cv[src] = {"n": int(m.sum()), "category_balanced_accuracy": round(balanced_accuracy(cy, cp.argmax(1)), 4),
                       "category_accuracy": round(float((cp.argmax(1) == cy).mean()), 4),
                       "confusion": confusion(cy, cp.argmax(1), 3).tolist()}
        out["grouped_cv_linear_probe"] = cv
    # LAB mean/std of every image, read once: the colour-only baseline's features and the stain target.
    colour = np.array([np.concatenate(D.lab_stats(D.read_rgb(s.path))) for s in samples], np.float32)
    # Stain-normalised test: every test image Reinhard-normalised to the training images' mean colour.
    test = [s for s, k in zip(samples, split, strict=True) if k == 2]
    train_idx = np.nonzero(split == 0)[0]
    rng = np.random.default_rng(0)
    pick = train_idx[rng.choice(len(train_idx), min(200, len(train_idx)), replace=False)]
    tm, ts = colour[pick, :3].mean(0), colour[pick, 3:].mean(0)
    session = _onnx_session(model, recipe.patch_size, run.cache)
    lg, idx = _image_logits(session, test, recipe, lambda im: D.reinhard(im, tm, ts))
    probs, ids = image_probs(lg, idx, temperature)
    y = np.array([s.label for s in test])[ids]
    cp, cy = to_categories(probs, y, cats)
    test_sources = np.array([t.source for t in test])[ids]
    out["stain_normalised_test"] = {
        "method": "Reinhard (LAB mean/std) to the mean of 200 training images",
        "category_balanced_accuracy": round(balanced_accuracy(cy, cp.argmax(1)), 4),
        "class_balanced_accuracy": round(balanced_accuracy(y, probs.argmax(1)), 4),
        "per_source_category_accuracy": {
            src: round(float((cp.argmax(1)[test_sources == src] == cy[test_sources == src]).mean()), 4)
            for src in sorted({t.source for t in test})},
    }
    out["colour_only_baseline"] = _colour_baseline(colour, split, labels, sources, cats, cfg)
    return out


def _colour_baseline(feats: np.ndarray, split: np.ndarray, labels: np.ndarray, sources: np.ndarray, cats: list[str],
                     cfg: Any) -> dict[str, Any]:
    """How far colour alone (LAB mean/std of the image, ``feats``) predicts the class: a shortcut detector."""

    mu, sd = feats[split == 0].mean(0), feats[split == 0].std(0) + 1e-6
    feats = (feats - mu) / sd
    idx = np.arange(len(feats))
    tr, va, te = split == 0, split == 1, split == 2
    head = train_linear(feats[tr], labels[tr], sample_weights(labels[tr], sources[tr], cfg.balance, cats), len(cats), cfg,
                        (feats[va], idx[va], labels), None, "colour baseline")
    with torch.no_grad():
        probs = probabilities(head(torch.from_numpy(feats[te])).numpy(), "softmax")
    return {"features": "LAB mean and std of tissue pixels (6 numbers per image)",
            "class_balanced_accuracy": round(balanced_accuracy(labels[te], probs.argmax(1)), 4),
            "category_balanced_accuracy": _cat_bal(probs, labels[te], cats)}


# ----------------------------------------------------------------------------- LOSO + grouped CV


def evaluate_protocols(run_dir: Path, out_dir: Path | None = None, protocols: tuple[str, ...] = PROTOCOLS,
                       folds: int = 5, variants: tuple[str, ...] = (), cfg_overrides: dict[str, Any] | None = None,
                       work: Path | None = None, group: str | None = None) -> dict[str, Any]:
    """Leave-one-source-out and grouped CV of the run's recipe (see ``cellview.train.protocol``).

    ``variants``: also test the same fold models on stain-normalised tiles (``macenko``, ``reinhard``;
    the reference stain excludes the LOSO held-out source) and with test-time augmentation
    (``flips``, ``d4``); their tiles are cached in the run on first use.
    Writes ``protocol.json`` and ``protocol.md`` to ``out_dir`` (default RUN/eval). ``group``: regroup the
    images by another rule first (``grouping.GROUP_RULES``: runs, near-duplicates, images…) to compare groupings
    on the same cached features (default out_dir RUN/eval-group-<rule>).
    """
    from dataclasses import replace

    t0 = time.time()
    run = Run(run_dir)
    recipe, cfg = run.recipe(), run.config()
    if cfg_overrides:
        cfg = replace(cfg, **cfg_overrides)
    cfg.check()
    torch.set_num_threads(cfg.threads)
    samples, _ = run.samples()
    grouping = None
    if group:
        samples, grouping = regroup(run, recipe, samples, cfg, group)
    out_dir = Path(out_dir or run.path / ("eval" if not group else f"eval-group-{group}"))
    out_dir.mkdir(parents=True, exist_ok=True)
    fold_sets = {p: make_folds(samples, p, folds, cfg.seed) for p in protocols}
    eval_names = {"plain": "eval", **ensure_variant_caches(run, recipe, samples, cfg, variants)}
    all_folds = [f for p in protocols for f in fold_sets[p]]
    logits = run_folds(run, recipe, samples, cfg, all_folds, Path(work or run.path / "folds"), eval_names)
    logits = {p: _combine_tta(v) for p, v in logits.items()}
    subset = variant_subset(samples)
    report = protocol_report(logits, samples, recipe, fold_sets,
                             subsets={k: subset for k in ("plain_subset", "flips", "d4", "macenko", "reinhard")})
    if variants:
        report["variant_subset"] = {"images": int(subset.sum()),
                                    "rule": "every image of sources with ≤ 200 images, every 5th of the others"}
    report["headline"] = headline(report)
    report["config"] = asdict(cfg)
    report["protocols"] = list(protocols)
    report["variants"] = list(variants)
    if grouping is not None:
        report["grouping"] = grouping
    report["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(out_dir / "protocol.json", json.dumps(report, indent=2, default=_json_default) + "\n")
    md = [f"# {recipe.name}: leave-one-source-out and grouped cross-validation", "",
          f"Recipe: `{json.dumps({k: v for k, v in asdict(cfg).items() if k not in ('device', 'threads')})}`", "",
          f"Temperature (CV out-of-fold): {report['temperature']:.3f}. Time: {report['seconds']:.0f} s.", ""]
    for label in [k for k in report.get("cv", report.get("loso", {})) if not k.startswith("fold")]:
        md += [f"### Tiles: {label}", "", markdown_tables(report, label)]
    atomic_write_text(out_dir / "protocol.md", "\n".join(md) + "\n")
    for protocol, h in report["headline"].items():
        print(f"{protocol}: " + "; ".join(f"{src} {v['category_balanced_accuracy']:.3f}" for src, v in h.items()
                                          if isinstance(v, dict)) + f" (mean of sources {h['mean_over_sources']}, "
              f"worst {h['worst_source']})", file=sys.stderr)
    return report


def regroup(run: Run, recipe: D.Recipe, samples: list[D.Sample], cfg: Any,
            rule: str) -> tuple[list[D.Sample], dict[str, Any]]:
    """The run's images grouped by ``rule`` for every source (near-duplicate embeddings cached in the run)."""
    from cellview.train.backbone import FeatureRunner, build_backbone
    from cellview.train.grouping import assign_groups
    from cellview.train.train import dup_embeddings

    runner = None

    def embed(part: list[D.Sample]) -> np.ndarray:
        nonlocal runner
        if runner is None:
            bb = build_backbone("efficientnet-lite0", recipe.patch_size, 0, pretrained=True)
            runner = FeatureRunner(bb, recipe.patch_size, run.cache, "cpu", cfg.threads)
        return dup_embeddings(part, recipe.patch_size, runner, run.cache)

    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    return assign_groups(samples, recipe, embed, rule, say)[:2]


def _combine_tta(per: dict[str, Any]) -> dict[str, Any]:
    """``tta{k}_...`` logit sets (one per flip/rotation k) → ``flips`` / ``d4`` sets of averaged probabilities.

    The averaged tile probabilities are turned back into log-probabilities, which the metrics' softmax
    (at T = 1) maps onto the averaged probabilities again.
    """
    views = sorted(k for k in per if k.startswith("tta"))
    if not views:
        return per
    out = {k: v for k, v in per.items() if not k.startswith("tta")}
    base_idx = per["tta0"][1]
    for mode, ks in (("flips", (0, 1, 2, 3)), ("d4", tuple(range(8)))):
        names = [f"tta{k}" for k in ks]
        if not all(n in per for n in names):
            continue
        probs = np.mean([probabilities(per[n][0], "softmax") for n in names], axis=0)
        out[mode] = (np.log(np.maximum(probs, 1e-12)), base_idx)
    return out


def variant_subset(samples: list[D.Sample], every: int = 5, small: int = 200) -> np.ndarray:
    """Images the stain / TTA variants are tested on: every image of a small source, every ``every``-th of the rest.

    The variants cost one more network pass per tile and view; the plain tiles are scored on the
    same subset alongside, so each comparison is like for like.
    """
    sources = np.array([s.source for s in samples])
    keep = np.zeros(len(samples), bool)
    for src in set(sources.tolist()):
        idx = np.flatnonzero(sources == src)
        keep[idx if len(idx) <= small else idx[::every]] = True
    return keep


def ensure_variant_caches(run: Run, recipe: D.Recipe, samples: list[D.Sample], cfg: Any,
                          variants: tuple[str, ...]) -> dict[str, str]:
    """Cache each variant's evaluation tiles for ``variant_subset``; returns label → cache name.

    A stain variant's name holds ``{ref}``: per LOSO fold a reference stain estimated without the
    held-out source (``no-<source>``, only that source's images are cached), for CV one from all sources.
    """
    from cellview.analysis.classifier import dihedral_view
    from cellview.analysis.stain import estimate_reference
    from cellview.train.backbone import FeatureRunner, build_backbone
    from cellview.train.train import extract

    names: dict[str, str] = {}
    runner = None
    subset = variant_subset(samples)

    def get_runner() -> Any:
        nonlocal runner
        if runner is None:
            bb = build_backbone(cfg.arch, recipe.patch_size, cfg.cache_depth, pretrained=cfg.pretrained)
            runner = FeatureRunner(bb, recipe.patch_size, run.cache, "cpu", cfg.threads)
        return runner

    def cache(name: str, keep: np.ndarray, make: Any, desc: str) -> None:
        if run.cached(name) is not None:
            return
        ids = np.flatnonzero(keep)
        f, i = extract([samples[k] for k in ids], make, get_runner(), desc)
        run.store(name, f, ids[i])

    sources = np.array([s.source for s in samples])
    for variant in variants:
        if variant in ("flips", "d4"):
            for k in range(4 if variant == "flips" else 8):
                names[f"tta{k}"] = f"eval_dihedral{k}"
                cache(f"eval_dihedral{k}", subset, lambda _, s, k=k: dihedral_view(_tiles_for(s, recipe), k),
                      f"features: evaluation tiles, view {k}")
        elif variant in ("macenko", "reinhard"):
            for ref_name in ["all", *sorted(set(sources.tolist()))]:
                tag = "all" if ref_name == "all" else f"no-{ref_name}"
                ref = None
                if run.cached(f"eval_{variant}_{tag}") is None:
                    ref = estimate_reference(_reference_images([s for s in samples if s.source != ref_name]))
                keep = subset if ref_name == "all" else subset & (sources == ref_name)
                cache(f"eval_{variant}_{tag}", keep, lambda _, s, ref=ref, method=variant: _tiles_for(
                    s, recipe, stain=lambda tiles: _normalise_tiles(tiles, method, ref)),
                    f"features: {variant}-normalised evaluation tiles (reference {tag})")
            names[variant] = f"eval_{variant}_{{ref}}"
        else:
            raise ValueError(f"unknown evaluation variant {variant!r}; use macenko, reinhard, flips or d4")
    if names:
        names["plain_subset"] = "eval"
    return names


def _reference_images(samples: list[D.Sample], per_source: int = 100, seed: int = 0) -> list[np.ndarray]:
    """Up to ``per_source`` images from each source and category (the model's reference stain is pooled alike)."""
    rng = np.random.default_rng(seed)
    out = []
    keys = sorted({(s.source, s.label) for s in samples})
    for key in keys:
        group = [s for s in samples if (s.source, s.label) == key]
        n = max(1, per_source // max(1, len({k for k in keys if k[0] == key[0]})))
        for i in rng.choice(len(group), min(n, len(group)), replace=False):
            out.append(D.read_rgb(group[i].path))
    return out


def _normalise_tiles(tiles: np.ndarray, method: str, reference: Any) -> np.ndarray:
    """An image's tiles normalised as the pipeline does for a slide: one stain estimate from its tiles."""
    from cellview.analysis.stain import fit_transform

    if not len(tiles):
        return tiles
    transform = fit_transform(method, tiles, reference)
    return np.stack([transform.apply(t) for t in tiles])
