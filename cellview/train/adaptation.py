"""The adaptation curve (``cellview evaluate RUN --adaptation``): what ``cellview adapt`` gains on a new source.

For each leave-one-source-out fold, the held-out source plays a new lab: k labelled images per
category (k = 1, 3, 5, 10, drawn at random, ``draws`` times) adapt the fold's model exactly as
``cellview adapt`` does (``cellview.lab.adapt.fit_head`` on the cached features of the images' analysis
tiles, labels given as categories), and the rest of that source's images are called with the vote
rule. The fold's out-of-domain statistics are fitted on the other sources (as ``cellview export``
fits them) and extended with the labelled tiles (``domain.with_lab``), so the share of the rest's
tiles in domain before and after is measured too.

``methods`` compares ways of keeping the base model's knowledge where the lab gave no labels:
``prior`` (the shipped one: an L2 pull towards the fold's head) and ``bank`` (replaying a bank of the
training tiles' features, up to ``BANK_PER_CLASS`` per source and class, with the lab as one more
source in the loss weights). Only NumPy and the cached features: minutes on a CPU.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellview.analysis.classifier import probabilities
from cellview.analysis.domain import DomainStats, fit_domain, tile_quality, with_lab
from cellview.analysis.model_spec import CATEGORIES
from cellview.analysis.results import image_calls
from cellview.base.files import atomic_write_text
from cellview.lab.adapt import AdaptSettings, fit_head, label_weights
from cellview.train import data as D
from cellview.train.metrics import balanced_accuracy
from cellview.train.splits import group_split

ADAPT_KS: tuple[int | str, ...] = (1, 3, 5, 10, "all")
"""Labelled images per category; ``all``: every other patient or group of the source (grouped folds)."""
ALL_FOLDS = 5
METHODS = ("prior", "bank")
BANK_PER_CLASS = 200
TARGET_K = 5
TARGET_BALANCED_ACCURACY = 0.80
SECTION = "## Adapting to a lab's labels (cellview adapt)"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def eval_quality(run: Any, recipe: D.Recipe, samples: list[D.Sample]) -> np.ndarray:
    """``domain.tile_quality`` of every cached evaluation tile (in the cache's order), cached in the run."""
    from cellview.train.train import _tiles_for, load_npy, save_npy

    path = run.cache / "eval_quality.npy"
    _, index = run.features("eval")
    got = load_npy(path) if path.exists() else None
    if got is not None and len(got) == len(index):
        return got
    t = time.time()
    out = np.zeros((len(index), 3), np.float32)
    starts = np.searchsorted(index, np.arange(len(samples)))
    per_sample = np.bincount(index, minlength=len(samples))
    for i, s in enumerate(samples):
        n = int(per_sample[i])
        if n:
            tiles = _tiles_for(s, recipe)
            if len(tiles) != n:
                raise ValueError(f"{s.path}: {len(tiles)} analysis tiles now, {n} cached; retrain the run")
            out[starts[i]:starts[i] + n] = tile_quality(tiles)
    save_npy(path, out)
    _say(f"pixel checks of {len(out)} evaluation tiles in {time.time() - t:.0f} s")
    return out


def fold_domain(features: np.ndarray, quality: np.ndarray, labels: np.ndarray, sources: np.ndarray,
                groups: np.ndarray, fit: np.ndarray, seed: int = 0) -> DomainStats:
    """Domain statistics from the tiles marked ``fit``: 85 % of their groups fit, 15 % calibrate (as export)."""
    names = np.unique(groups[fit])
    rng = np.random.default_rng(seed)
    cal_groups = rng.choice(names, max(1, int(0.15 * len(names))), replace=False)
    cal = fit & np.isin(groups, cal_groups)
    train = fit & ~cal
    return fit_domain(features[train], labels[train], features[cal], labels[cal], quality[cal],
                      train_sources=sources[train], train_groups=groups[train], train_quality=quality[train])


def _bank(train_tiles: np.ndarray, tile_source: np.ndarray, tile_label: np.ndarray, rng: np.random.Generator,
          per_class: int = BANK_PER_CLASS) -> np.ndarray:
    keep = []
    for src in np.unique(tile_source[train_tiles]):
        for c in np.unique(tile_label[train_tiles]):
            m = train_tiles[(tile_source[train_tiles] == src) & (tile_label[train_tiles] == c)]
            if len(m):
                keep.append(m if len(m) <= per_class else rng.choice(m, per_class, replace=False))
    return np.sort(np.concatenate(keep))


def other_tissue(run: Any, recipe: D.Recipe, cfg: Any, data_root: Path | None = None,
                 every: int = 10) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Features and pixel checks of tissue that is not the model's, to see what adapting lets into the domain.

    The OpenSlide CMU-1 sample (skin) and every ``every``-th LC25000 lung image at the lung recipe's
    spacing, when ``../shared/data`` has them; their tiles as ``analyze`` cuts them at the model's spacing.
    """
    from cellview.analysis.pipeline import plan_grid
    from cellview.analysis.results import AnalysisParams
    from cellview.analysis.tiling import read_tile
    from cellview.slides.opening import open_slide
    from cellview.train import default_data_dir
    from cellview.train.backbone import FeatureRunner, build_backbone

    root = Path(data_root or default_data_dir())
    sets: dict[str, np.ndarray] = {}
    slide = root / "slides" / "CMU-1-Small-Region.svs"
    if slide.exists():
        with open_slide(slide) as s:
            _, grid = plan_grid(s, recipe.patch_size, recipe.spacing_um_px, AnalysisParams())
            sets["CMU-1 skin tissue tiles"] = np.stack([read_tile(s, grid, i) for i in range(grid.n_tiles)])
    lung = Path(__file__).resolve().parent / "recipes" / "lung-he.json"
    if lung.exists() and (root / "lc25000_lung").is_dir():
        samples = D.read_samples(D.load_recipe(lung, root))[::every]
        tiles = [D.analysis_tiles(D.read_rgb(x.path), x.spacing_um_px, recipe.spacing_um_px, recipe.patch_size)
                 for x in samples]
        sets["LC25000 lung tiles"] = np.concatenate([t for t in tiles if len(t)])
    if not sets:
        return {}
    bb = build_backbone(cfg.arch, recipe.patch_size, cfg.cache_depth, pretrained=cfg.pretrained)
    runner = FeatureRunner(bb, recipe.patch_size, run.cache, "cpu", cfg.threads)
    out = {}
    for name, tiles in sets.items():
        feats = np.concatenate([np.asarray(runner(tiles[i:i + 64]), np.float32) for i in range(0, len(tiles), 64)])
        out[name] = (feats, tile_quality(tiles))
    return out


FitFn = Callable[..., tuple[np.ndarray, np.ndarray]]


def adaptation_curve(run_dir: Path, out_dir: Path | None = None, ks: tuple[int | str, ...] = ADAPT_KS, draws: int = 10,
                     methods: tuple[str, ...] = ("prior",), work: Path | None = None,
                     settings: AdaptSettings | None = None) -> dict[str, Any]:
    """Leave-one-source-out with k labelled images per category of the held-out source (module docstring)."""
    import torch

    from cellview.train.protocol import fold_stem, make_folds, run_folds
    from cellview.train.train import Run, pretrained_pooled

    t0 = time.time()
    settings = settings or AdaptSettings()
    run = Run(run_dir)
    recipe, cfg = run.recipe(), run.config()
    samples, _ = run.samples()
    out_dir = Path(out_dir or run.path / "eval")
    work = Path(work or run.path / "folds")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown adaptation method {bad[0]!r}; use {', '.join(METHODS)}")
    folds = make_folds(samples, "loso")
    if not folds:
        raise ValueError("the adaptation curve needs at least two sources (leave-one-source-out)")
    run_folds(run, recipe, samples, cfg, folds, work)  # the fold models (reused when there)
    protocol_path = out_dir / "protocol.json"
    protocol = json.loads(protocol_path.read_text(encoding="utf-8")) if protocol_path.exists() else {}
    temperature = float(protocol.get("temperature", 1.0))
    feats, index = pretrained_pooled(run, "eval", recipe, cfg)
    feats = np.asarray(feats, np.float32)
    quality = eval_quality(run, recipe, samples)
    others = other_tissue(run, recipe, cfg) if cfg.cache_depth == 0 else {}
    cats = [c.category for c in recipe.classes]
    cat_of_class = np.array([CATEGORIES.index(c) for c in cats])
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    groups = np.array([s.group for s in samples])
    y_cat = cat_of_class[labels]
    t_src, t_lab, t_grp = sources[index], labels[index], groups[index]
    report: dict[str, Any] = {"ks": list(ks), "draws": draws, "methods": list(methods), "temperature": temperature,
                              "rule": "vote", "settings": {k: getattr(settings, k) for k in
                                                           ("l2_to_base", "iterations", "learning_rate")},
                              "labels": "categories (as a lab gives them)", "sources": {}}
    for fold in folds:
        src = fold.name.removeprefix("without ")
        state = torch.load(fold_stem(work, cfg, fold).with_suffix(".pt"), map_location="cpu", weights_only=True)
        w0, b0 = state["fc.weight"].numpy(), state["fc.bias"].numpy()
        in_src = sources == src
        train_tiles = np.flatnonzero(~in_src[index])
        stats = fold_domain(feats, quality, t_lab, t_src, t_grp, ~in_src[index], cfg.seed)
        bank = _bank(train_tiles, t_src, t_lab, np.random.default_rng(cfg.seed)) if "bank" in methods else None
        entry: dict[str, Any] = {"images": int(in_src.sum()), "categories": sorted({cats[c] for c in labels[in_src]}),
                                 "k": {}}
        _say(f"adaptation: {src} ({entry['images']} images)")
        ctx = _Context(feats, index, quality, groups, y_cat, cat_of_class, cats, t_lab, t_src, temperature, settings,
                       tuple(methods), w0, b0, stats, bank, others)
        counts = [int((in_src & (y_cat == c)).sum()) for c in range(len(CATEGORIES)) if (in_src & (y_cat == c)).any()]
        for k in ks:
            if k != "all" and min(counts) <= int(k):
                entry["k"][str(k)] = {"skipped": f"a category of {src} has {min(counts)} images: none left to test"}
                continue
            per: dict[str, list[dict[str, Any]]] = {"base": [], **{m: [] for m in methods}}
            if k == "all":  # every other patient / group of the source labelled: what more labels can reach
                fold = group_split(labels[in_src], groups[in_src], [1.0] * ALL_FOLDS, cfg.seed)
                trials = []
                for f in range(ALL_FOLDS):
                    test = np.zeros(len(samples), bool)
                    test[np.flatnonzero(in_src)[fold == f]] = True
                    trials.append((in_src & ~test, test))
            else:
                trials = []
                for r in range(draws):
                    rng = np.random.default_rng(cfg.seed * 1_000_003 + r * 101 + int(k))
                    is_lab = np.zeros(len(samples), bool)
                    for c in range(len(CATEGORIES)):
                        cand = np.flatnonzero(in_src & (y_cat == c))
                        if len(cand):
                            is_lab[rng.choice(cand, min(int(k), len(cand)), replace=False)] = True
                    trials.append((is_lab, in_src & ~is_lab))
            for is_lab, rest in trials:
                for name, row in _trial(ctx, is_lab, rest).items():
                    per[name].append(row)
            entry["k"][str(k)] = row = {name: _summarise(rows) for name, rows in per.items()}
            _say(f"  k={k}: " + "; ".join(f"{name} {_mean(v['balanced_accuracy'])}" for name, v in row.items())
                 + f"; in domain {_mean(row['base']['in_domain'])} → "
                 + ", ".join(f"{m} {_mean(row[m]['in_domain'])}" for m in methods))
        entry["loso_no_labels"] = protocol.get("loso", {}).get("plain", {}).get(src, {}).get("vote", {}).get(
            "category_balanced_accuracy")
        report["sources"][src] = entry
    target = [(src, e["k"].get(str(TARGET_K), {}).get("prior", {}).get("balanced_accuracy", {}).get("mean"))
              for src, e in report["sources"].items()]
    report["target"] = {"text": f"leave-one-source-out with {TARGET_K} labelled images per category of the held-out "
                                f"source: every held-out source ≥ {TARGET_BALANCED_ACCURACY:.2f}",
                        "met": all(v is not None and v >= TARGET_BALANCED_ACCURACY for _, v in target),
                        "figures": dict(target)}
    report["seconds"] = round(time.time() - t0, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "adaptation.json", json.dumps(report, indent=2) + "\n")
    if protocol:
        protocol["adaptation"] = report
        atomic_write_text(protocol_path, json.dumps(protocol, indent=2) + "\n")
    atomic_write_text(out_dir / "adaptation.md", markdown(report, f"cellview evaluate {run.path} --adaptation"
                                                          + (f" --adaptation-methods {','.join(methods)}"
                                                             if tuple(methods) != ("prior",) else "")))
    return report


@dataclass(frozen=True)
class _Context:
    """One leave-one-source-out fold's arrays: the cached tiles, the fold's head, domain statistics and bank."""

    feats: np.ndarray
    index: np.ndarray
    quality: np.ndarray
    groups: np.ndarray
    y_cat: np.ndarray
    cat_of_class: np.ndarray
    cats: list[str]
    t_lab: np.ndarray
    t_src: np.ndarray
    temperature: float
    settings: AdaptSettings
    methods: tuple[str, ...]
    w0: np.ndarray
    b0: np.ndarray
    stats: DomainStats
    bank: np.ndarray | None
    others: dict[str, tuple[np.ndarray, np.ndarray]]


def _trial(c: _Context, is_lab: np.ndarray, rest: np.ndarray) -> dict[str, dict[str, Any]]:
    """Adapt on the images marked ``is_lab`` (labels as categories) by each method; score every head on ``rest``."""
    from cellview.train.train import sample_weights

    other_groups = rest & ~np.isin(c.groups, c.groups[is_lab])
    lt, tt = np.flatnonzero(is_lab[c.index]), np.flatnonzero(rest[c.index])
    x_lab, img_lab = c.feats[lt], c.index[lt]
    cat_lab = c.y_cat[img_lab]
    allowed = c.cat_of_class[None, :] == cat_lab[:, None]
    lab_w = label_weights(cat_lab, img_lab)
    heads: dict[str, tuple[np.ndarray, np.ndarray]] = {"base": (c.w0, c.b0)}
    for m in c.methods:
        if m == "prior":
            heads[m] = fit_head(x_lab, allowed, lab_w, c.w0, c.b0, c.settings)
            continue
        bank = c.bank if c.bank is not None else np.zeros(0, np.int64)
        bw = sample_weights(c.t_lab[bank], c.t_src[bank], "source_category", c.cats).astype(np.float64)
        n_src = len(np.unique(c.t_src[bank]))
        w = np.concatenate([bw / bw.sum() * n_src / (n_src + 1), lab_w / lab_w.sum() / (n_src + 1)])
        x = np.concatenate([c.feats[bank], x_lab])
        a = np.concatenate([np.eye(len(c.cats), dtype=bool)[c.t_lab[bank]], allowed])
        heads[m] = fit_head(x, a, w, c.w0, c.b0, replace(c.settings, l2_to_base=c.settings.l2_to_base / 10))
    lab_stats = with_lab(c.stats, x_lab, [CATEGORIES[k] for k in cat_lab], img_lab.astype(str))
    out = {}
    for name, (w, b) in heads.items():
        stats = c.stats if name == "base" else lab_stats
        row = _score(probabilities(c.feats[tt] @ w.T + b, "softmax", c.temperature), c.index[tt], rest, other_groups,
                     c.y_cat, c.cats, stats, c.feats[tt], c.quality[tt])
        row["other_in_domain"] = {k: float(stats.in_domain(stats.score(f, quality=q)).mean())
                                  for k, (f, q) in c.others.items()}
        out[name] = row
    return out


def _score(probs: np.ndarray, tile_img: np.ndarray, rest: np.ndarray, other_groups: np.ndarray, y_cat: np.ndarray,
           cats: list[str], stats: DomainStats, features: np.ndarray, quality: np.ndarray) -> dict[str, Any]:
    pred, _, _ = image_calls(probs, tile_img, len(rest), cats, "vote")
    out: dict[str, Any] = {}
    for name, keep in (("rest", rest), ("other_groups", other_groups)):
        y, p = y_cat[keep], pred[keep]
        present = sorted(set(y.tolist()))
        if not present or len(present) < len(set(y_cat[rest].tolist())):
            out[name] = None
            continue
        out[name] = {"balanced_accuracy": balanced_accuracy(y, p),
                     "recall": {CATEGORIES[c]: float((p[y == c] == c).mean()) for c in present}}
    out["in_domain"] = float(stats.in_domain(stats.score(features, quality=quality)).mean()) if len(features) else None
    return out


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(values: list[float]) -> dict[str, float] | None:
        v = [x for x in values if x is not None]
        if not v:
            return None
        return {"mean": round(float(np.mean(v)), 4), "sd": round(float(np.std(v)), 4), "min": round(float(np.min(v)), 4),
                "n": len(v)}

    rest = [r["rest"] for r in rows]
    other = [r["other_groups"] for r in rows]
    recalls = {c: stat([r["recall"].get(c) for r in rest if r]) for c in CATEGORIES}
    names = rows[0].get("other_in_domain", {}) if rows else {}
    return {"balanced_accuracy": stat([r["balanced_accuracy"] for r in rest if r]),
            "recall": {c: v for c, v in recalls.items() if v is not None},
            "other_groups_balanced_accuracy": stat([r["balanced_accuracy"] for r in other if r]),
            "in_domain": stat([r["in_domain"] for r in rows]),
            "other_in_domain": {n: stat([r["other_in_domain"][n] for r in rows]) for n in names}}


def _mean(v: dict[str, Any] | None) -> str:
    return "–" if not v else f"{v['mean']:.3f}"


def _cell(v: dict[str, Any] | None) -> str:
    if not v:
        return "–"
    return f"{v['mean']:.2f} ± {v['sd']:.2f}"


def _at(entry: dict[str, Any], k: Any, method: str, key: str) -> Any:
    """One figure of the curve (None where that k was skipped or not measured)."""
    return entry["k"].get(str(k), {}).get(method, {}).get(key)


def markdown(report: dict[str, Any], command: str) -> str:
    """The model card's adaptation section: the curve beside the leave-one-source-out row, and the target."""
    ks = report["ks"]
    k5 = TARGET_K if TARGET_K in ks else ks[0]
    lines = [
        SECTION,
        "",
        f"`cellview adapt` refits the head on a lab's labelled images. Stand-in for a new lab: each "
        f"leave-one-source-out fold's model, adapted with k labelled images per category of the held-out source "
        f"(labels given as categories; {report['draws']} random draws per k; 'all others': every other patient or "
        "group of the source labelled, 5 grouped folds), called on the **rest** of that source "
        "(vote rule, category balanced accuracy, mean ± sd over draws). 'No labels' is the fold's model as it is on "
        "the same images. In domain: share of the rest's tiles in domain before → after adding the labelled tiles to "
        "the fold's out-of-domain statistics (fitted on the other sources).",
        "",
        "| held-out source | images | no labels | " + " | ".join(f"k = {k}" if k != "all" else "all others" for k in ks)
        + f" | k = {k5}, other patients / groups only | in domain, k = {k5} |",
        "|---|---|---|" + "---|" * len(ks) + "---|---|",
    ]
    recall_rows, other_rows = [], []
    for src, e in report["sources"].items():
        base = _at(e, k5, "base", "balanced_accuracy")
        cells = [_cell(_at(e, k, "prior", "balanced_accuracy")) for k in ks]
        dom_b, dom_a = _at(e, k5, "base", "in_domain"), _at(e, k5, "prior", "in_domain")
        lines.append(f"| {src} | {e['images']} | {_cell(base).split(' ±')[0]} | "
                     + " | ".join(f"**{c}**" if k == k5 else c for k, c in zip(ks, cells))
                     + f" | {_cell(_at(e, k5, 'prior', 'other_groups_balanced_accuracy'))} | "
                     + (f"{dom_b['mean']:.0%} → {dom_a['mean']:.0%} |" if dom_b and dom_a else "– |"))
        r, rb = _at(e, k5, "prior", "recall") or {}, _at(e, k5, "base", "recall") or {}
        recall_rows.append(f"{src}: " + ", ".join(f"{c} {rb[c]['mean']:.2f} → {r[c]['mean']:.2f}"
                                                  for c in CATEGORIES if c in r and c in rb))
        ob, oa = _at(e, k5, "base", "other_in_domain") or {}, _at(e, k5, "prior", "other_in_domain") or {}
        if ob and oa:
            other_rows.append(f"{src}: " + ", ".join(f"{n} {ob[n]['mean']:.0%} → {oa[n]['mean']:.0%}" for n in ob))
    lines += ["", f"Recall per category at k = {k5} (no labels → adapted): " + "; ".join(recall_rows) + "."]
    if other_rows:
        lines += ["", f"Tissue that is not colon, in domain before → after adapting with k = {k5} (what the lab's "
                      "means let in): " + "; ".join(other_rows) + "."]
    if len(report["methods"]) > 1:
        lines += ["", "Ways to keep the base model's knowledge, same draws (category balanced accuracy of the rest, "
                      "mean over draws):", "",
                  "| held-out source | k | " + " | ".join(report["methods"]) + " |",
                  "|---|---|" + "---|" * len(report["methods"])]
        for src, e in report["sources"].items():
            for k in ks:
                lines.append(f"| {src} | {k} | " + " | ".join(_mean(_at(e, k, m, "balanced_accuracy"))
                                                              for m in report["methods"]) + " |")
        lines += ["", f"`prior`: L2 pull towards the base head (shipped); `bank`: a bank of up to {BANK_PER_CLASS} "
                      "training tiles' features per source and class replayed with the lab as one more source."]
    t = report["target"]
    lines += ["", f"Target — {t['text']}: **{'met' if t['met'] else 'not met'}** ("
              + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} not measured" for k, v in t["figures"].items())
              + ").", f"Reproduce: `{command}` ({report['seconds']:.0f} s).", ""]
    return "\n".join(lines)
