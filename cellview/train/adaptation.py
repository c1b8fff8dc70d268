"""The adaptation curve (``cellview evaluate RUN --adaptation``): what ``cellview adapt`` gains on a new source.

For each leave-one-source-out fold, the held-out source plays a new lab: k labelled images per
category (k = 1, 3, 5, 10, drawn at random, ``draws`` times) adapt the fold's model exactly as
``cellview adapt`` does (``cellview.lab.head.fit_head`` on the cached features of the images' analysis
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from cellview.analysis.classifier import probabilities
from cellview.analysis.domain import DomainStats, fit_domain, tile_quality, with_lab
from cellview.analysis.model_spec import CATEGORIES
from cellview.analysis.results import category_probabilities, image_calls
from cellview.base.files import atomic_write_text
from cellview.lab.check import CheckResult, cross_validate
from cellview.lab.decision import VERDICTS, WRITE_POLICY, bootstrap_change, decide
from cellview.lab.head import AdaptSettings, fit_head, label_weights
from cellview.lab.labtiles import LabItem, LabTiles
from cellview.lab.suggest import rank_for_labelling
from cellview.train import data as D
from cellview.train.metrics import balanced_accuracy
from cellview.train.splits import group_split

ADAPT_KS: tuple[int | str, ...] = (1, 3, 5, 10, "all")
"""Labelled images per category; ``all``: every other patient or group of the source (grouped folds)."""
ALL_FOLDS = 5
CV_FOLDS = 5
QUANTILES = (0.025, 0.05, 0.1, 0.2, 0.8, 0.9, 0.95, 0.975)
SUGGESTED_N = 15
"""Images chosen by ``cellview suggest``'s rule, against 5 hand-picked (random) per category."""
METHODS = ("prior", "bank")
BANK_PER_CLASS = 200
TARGET_K = 5
TARGET_BALANCED_ACCURACY = 0.80
SECTION = "## Adapting to a lab's labels (cellview adapt)"


def _old_rule(d: dict[str, Any]) -> bool:
    """The gate before issue 26: after > before on the labelled images, ties to the tiles."""
    if round(d["after"], 6) != round(d["before"], 6):
        return d["after"] > d["before"]
    return d["after_tiles"] > d["before_tiles"]


POLICIES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "better": lambda d: d["items"][0] == 0,  # write only when the interval lies above zero
    "unless-worse": lambda d: d["items"][0] != 2,  # write unless the interval lies below zero
    "tiles-better": lambda d: d["tiles"][0] == 0,
    "tiles-unless-worse": lambda d: d["tiles"][0] != 2,
    "estimate>0": lambda d: d["items"][1] > 0,
    "old": _old_rule,
    "always": lambda d: True,
}
"""Writing rules the curve compares, on each draw's decision record (``_decision``)."""


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
                     settings: AdaptSettings | None = None, seen: bool = True,
                     suggested: int = SUGGESTED_N) -> dict[str, Any]:
    """Leave-one-source-out with k labelled images per category of the held-out source (module docstring).

    ``seen``: also unseen patients of the training sources (the grouped-CV folds' held-out patients);
    ``suggested``: also ``suggested`` images chosen by ``cellview suggest``'s rule (0: not).
    """
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
    cv_folds = make_folds(samples, "cv", CV_FOLDS, cfg.seed) if seen else []
    run_folds(run, recipe, samples, cfg, [*folds, *cv_folds], work)  # the fold models (reused when there)
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
                                                           ("l2_to_base", "iterations", "learning_rate", "interval",
                                                            "bootstrap", "measure")},
                              "policy": WRITE_POLICY, "policies": list(POLICIES),
                              "labels": "categories (as a lab gives them)", "sources": {}, "seen": {},
                              "suggested_n": suggested}

    def load_head(fold: Any) -> tuple[np.ndarray, np.ndarray]:
        state = torch.load(fold_stem(work, cfg, fold).with_suffix(".pt"), map_location="cpu", weights_only=True)
        return state["fc.weight"].numpy(), state["fc.bias"].numpy()

    def context(w0: np.ndarray, b0: np.ndarray, stats: DomainStats | None, bank: np.ndarray | None) -> _Context:
        return _Context(feats, index, quality, groups, y_cat, cat_of_class, cats, t_lab, t_src, temperature, settings,
                        tuple(methods), w0, b0, stats, bank, others if stats is not None else {})

    for fold in folds:
        src = fold.name.removeprefix("without ")
        w0, b0 = load_head(fold)
        in_src = sources == src
        train_tiles = np.flatnonzero(~in_src[index])
        stats = fold_domain(feats, quality, t_lab, t_src, t_grp, ~in_src[index], cfg.seed)
        bank = _bank(train_tiles, t_src, t_lab, np.random.default_rng(cfg.seed)) if "bank" in methods else None
        entry: dict[str, Any] = {"images": int(in_src.sum()), "categories": sorted({cats[c] for c in labels[in_src]}),
                                 "k": {}}
        _say(f"adaptation: {src} ({entry['images']} images)")
        ctx = context(w0, b0, stats, bank)
        entry["k"] = _curve(ctx, in_src, ks, draws, cfg.seed, labels, groups)
        if suggested:
            entry["suggested"] = _suggested_curve(ctx, [in_src], suggested, draws, cfg.seed)
            if "skipped" not in entry["suggested"]:
                _say(f"  {suggested} suggested: " + _line(entry["suggested"]))
        entry["loso_no_labels"] = protocol.get("loso", {}).get("plain", {}).get(src, {}).get("vote", {}).get(
            "category_balanced_accuracy")
        report["sources"][src] = entry
    if cv_folds:  # a source the model was trained on, its unseen patients: adapting must not make it worse
        heads = [load_head(f) for f in cv_folds]
        for src in sorted(set(sources.tolist())):
            _say(f"adaptation, unseen patients of a training source: {src}")
            pools = [(f.test & (sources == src)) for f in cv_folds]
            entry = {"images": int((sources == src).sum()), "folds": len(cv_folds), "k": {}}
            entry["k"] = _curve(None, None, [k for k in ks if k != "all"], draws, cfg.seed, labels, groups,
                                pools=pools, ctxs=[context(w, b, None, None) for w, b in heads])
            if suggested:
                entry["suggested"] = _suggested_curve(None, pools, suggested, draws, cfg.seed,
                                                      ctxs=[context(w, b, None, None) for w, b in heads])
                if "skipped" not in entry["suggested"]:
                    _say(f"  {suggested} suggested: " + _line(entry["suggested"]))
            report["seen"][src] = entry
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


def _line(row: dict[str, Any]) -> str:
    pol = row.get("decision", {}).get("policies", {}).get(WRITE_POLICY, {})
    return (f"base {_mean(row['base']['balanced_accuracy'])}, adapted {_mean(row['prior']['balanced_accuracy'])}, "
            f"with the decision {_mean(pol.get('balanced_accuracy'))} (writes {pol.get('writes', 0)}/"
            f"{pol.get('of', 0)})")


def _curve(ctx: _Context | None, in_src: np.ndarray | None, ks: Sequence[int | str], draws: int, seed: int,
           labels: np.ndarray, groups: np.ndarray, pools: list[np.ndarray] | None = None,
           ctxs: list[_Context] | None = None) -> dict[str, Any]:
    """Per k: draws of k labelled images per category from the pool, each adapted, decided and scored on the rest.

    One pool (a held-out source, ``ctx``) or several (``pools`` with their fold's ``ctxs``: draw r uses
    pool r mod len(pools)); a pool where a category has ≤ k images is skipped for that k.
    """
    pools = pools if pools is not None else [in_src]
    ctxs = ctxs if ctxs is not None else [ctx]
    y_cat = ctxs[0].y_cat
    out: dict[str, Any] = {}
    for k in ks:
        trials = []
        if k == "all":  # every other patient / group of the source labelled: what more labels can reach
            pool = pools[0]
            fold = group_split(labels[pool], groups[pool], [1.0] * ALL_FOLDS, seed)
            for f in range(ALL_FOLDS):
                test = np.zeros(len(y_cat), bool)
                test[np.flatnonzero(pool)[fold == f]] = True
                trials.append((0, pool & ~test, test))
        else:
            usable = [i for i, p in enumerate(pools) if min(_counts(p, y_cat)) > int(k)]
            if not usable:
                smallest = min(min(_counts(p, y_cat)) for p in pools)
                out[str(k)] = {"skipped": f"a category has {smallest} images: none left to test"}
                continue
            for r in range(draws):
                i = usable[r % len(usable)]
                rng = np.random.default_rng(seed * 1_000_003 + r * 101 + int(k))
                is_lab = np.zeros(len(y_cat), bool)
                for c in range(len(CATEGORIES)):
                    cand = np.flatnonzero(pools[i] & (y_cat == c))
                    if len(cand):
                        is_lab[rng.choice(cand, min(int(k), len(cand)), replace=False)] = True
                trials.append((i, is_lab, pools[i] & ~is_lab))
        rows = [_trial(ctxs[i], is_lab, rest, decide_too=k != "all") for i, is_lab, rest in trials]
        out[str(k)] = row = _collect(rows, ctxs[0].methods)
        _say(f"  k={k}: " + _line(row) + (f"; in domain {_mean(row['base']['in_domain'])} → "
                                          f"{_mean(row['prior']['in_domain'])}" if row["base"].get("in_domain")
                                          else ""))
    return out


def _counts(pool: np.ndarray, y_cat: np.ndarray) -> list[int]:
    return [int((pool & (y_cat == c)).sum()) for c in range(len(CATEGORIES)) if (pool & (y_cat == c)).any()] or [0]


def _suggested_curve(ctx: _Context | None, pools: list[np.ndarray], n: int, draws: int, seed: int,
                     ctxs: list[_Context] | None = None) -> dict[str, Any]:
    """``n`` images chosen by ``cellview suggest``'s rule from a random 80 % of the pool (a lab's unlabelled
    images), labelled with their true category, adapted, decided and scored on the rest of the pool."""
    ctxs = ctxs if ctxs is not None else [ctx]
    usable = [i for i, p in enumerate(pools) if p.sum() >= 2 * n]
    if not usable:
        return {"skipped": f"fewer than {2 * n} images to choose from"}
    rows = []
    for r in range(draws):
        i = usable[r % len(usable)]
        c = ctxs[i]
        rng = np.random.default_rng(seed * 7919 + r)
        members = np.flatnonzero(pools[i])
        seen = np.sort(rng.choice(members, max(n + 1, int(0.8 * len(members))), replace=False))
        tiles = np.flatnonzero(np.isin(c.index, seen))
        img_of_tile = np.searchsorted(seen, c.index[tiles])
        has = np.bincount(img_of_tile, minlength=len(seen)) > 0
        mean_f = np.zeros((len(seen), c.feats.shape[1]))
        np.add.at(mean_f, img_of_tile, c.feats[tiles])
        probs = probabilities(c.feats[tiles] @ c.w0.T + c.b0, "softmax", c.temperature)
        cat_p = category_probabilities(probs, tuple(c.cats), "softmax")
        mean_p = np.zeros((len(seen), cat_p.shape[1]))
        np.add.at(mean_p, img_of_tile, cat_p)
        cnt = np.maximum(np.bincount(img_of_tile, minlength=len(seen)), 1)[:, None]
        cand = np.flatnonzero(has)
        order = rank_for_labelling(mean_f[cand] / cnt[cand], mean_p[cand] / cnt[cand], n, seed=r)
        is_lab = np.zeros(len(c.y_cat), bool)
        is_lab[seen[cand[order]]] = True
        rows.append(_trial(c, is_lab, pools[i] & ~is_lab))
    out = _collect(rows, ctxs[0].methods)
    out["categories_labelled"] = _stat([float(r["categories_labelled"]) for r in rows])
    return out


@dataclass(frozen=True)
class _Context:
    """One fold's arrays: the cached tiles, the fold's head, domain statistics and bank."""

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
    stats: DomainStats | None
    bank: np.ndarray | None
    others: dict[str, tuple[np.ndarray, np.ndarray]]


def _decision(c: _Context, lt: np.ndarray, x_lab: np.ndarray, img_lab: np.ndarray, cat_lab: np.ndarray,
              allowed: np.ndarray) -> dict[str, Any]:
    """``cellview adapt``'s before / after check and decision on the labelled images (``lab.check``)."""
    images, item = np.unique(img_lab, return_inverse=True)
    item_cat = np.array([cat_lab[item == i][0] for i in range(len(images))])
    items = tuple(LabItem(i, CATEGORIES[int(k)], CATEGORIES[int(k)], int((item == i).sum()))
                  for i, k in enumerate(item_cat))
    lab = LabTiles(tuple(str(i) for i in images), items, x_lab, x_lab @ c.w0.T + c.b0, allowed, item)
    spec = SimpleNamespace(activation="softmax", temperature=c.temperature, class_categories=tuple(c.cats))
    result = None
    for got in cross_validate(lab, spec, c.w0, c.b0, c.settings):
        if isinstance(got, CheckResult):
            result = got
    assert result is not None
    out = {"before": result.before.items_balanced_accuracy, "after": result.after.items_balanced_accuracy,
           "before_tiles": result.before.tiles_balanced_accuracy, "after_tiles": result.after.tiles_balanced_accuracy,
           "level": result.plan.level, "units": result.decision.units}
    for measure, (b, a) in result.scores.items():
        d = decide(b, a, result.plan.unit_category, measure, c.settings.interval, c.settings.bootstrap,
                   c.settings.seed)
        verdict = VERDICTS.index(d.verdict)
        if result.plan.level == "block" and d.better:  # as cross_validate: blocks of one image flatter the head
            verdict = VERDICTS.index("not distinguishable")
        out[measure] = [verdict, round(d.estimate, 4), round(d.low, 4), round(d.high, 4)]
        boot = bootstrap_change(b, a, result.plan.unit_category, c.settings.bootstrap, c.settings.seed)
        out[f"{measure}_q"] = [round(float(v), 4) for v in np.quantile(boot, QUANTILES)]
    return out


def _trial(c: _Context, is_lab: np.ndarray, rest: np.ndarray, decide_too: bool = True) -> dict[str, Any]:
    """Adapt on the images marked ``is_lab`` (labels as categories) by each method; score every head on ``rest``;
    and ``cellview adapt``'s decision on the labelled images (``decision``; not for 'all others', where the
    check's cross-validation over a whole source would take hours and the curve only shows the ceiling)."""
    from cellview.train.train import sample_weights

    other_groups = rest & ~np.isin(c.groups, c.groups[is_lab])
    lt, tt = np.flatnonzero(is_lab[c.index]), np.flatnonzero(rest[c.index])
    x_lab, img_lab = c.feats[lt], c.index[lt]
    cat_lab = c.y_cat[img_lab]
    allowed = c.cat_of_class[None, :] == cat_lab[:, None]
    lab_w = label_weights(cat_lab, img_lab)
    heads: dict[str, tuple[np.ndarray, np.ndarray]] = {"base": (c.w0, c.b0)}
    n_cats = len(np.unique(cat_lab))
    for m in c.methods:
        if n_cats < 2:  # adapt refuses one category: the base model stays
            heads[m] = (c.w0, c.b0)
        elif m == "prior":
            heads[m] = fit_head(x_lab, allowed, lab_w, c.w0, c.b0, c.settings, c.cats)
        else:
            bank = c.bank if c.bank is not None else np.zeros(0, np.int64)
            bw = sample_weights(c.t_lab[bank], c.t_src[bank], "source_category", c.cats).astype(np.float64)
            n_src = len(np.unique(c.t_src[bank]))
            w = np.concatenate([bw / bw.sum() * n_src / (n_src + 1), lab_w / lab_w.sum() / (n_src + 1)])
            x = np.concatenate([c.feats[bank], x_lab])
            a = np.concatenate([np.eye(len(c.cats), dtype=bool)[c.t_lab[bank]], allowed])
            heads[m] = fit_head(x, a, w, c.w0, c.b0, replace(c.settings, l2_to_base=c.settings.l2_to_base / 10),
                                c.cats)
    lab_stats = (with_lab(c.stats, x_lab, [CATEGORIES[k] for k in cat_lab], img_lab.astype(str))
                 if c.stats is not None else None)
    out: dict[str, Any] = {"categories_labelled": n_cats}
    for name, (w, b) in heads.items():
        stats = c.stats if name == "base" else lab_stats
        row = _score(probabilities(c.feats[tt] @ w.T + b, "softmax", c.temperature), c.index[tt], rest, other_groups,
                     c.y_cat, c.cats, stats, c.feats[tt], c.quality[tt])
        row["other_in_domain"] = ({k: float(stats.in_domain(stats.score(f, quality=q)).mean())
                                   for k, (f, q) in c.others.items()} if stats is not None else {})
        out[name] = row
    out["decision"] = _decision(c, lt, x_lab, img_lab, cat_lab, allowed) if n_cats >= 2 and decide_too else None
    return out


def _score(probs: np.ndarray, tile_img: np.ndarray, rest: np.ndarray, other_groups: np.ndarray, y_cat: np.ndarray,
           cats: list[str], stats: DomainStats | None, features: np.ndarray, quality: np.ndarray) -> dict[str, Any]:
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
    out["in_domain"] = (float(stats.in_domain(stats.score(features, quality=quality)).mean())
                        if stats is not None and len(features) else None)
    return out


def _stat(values: list[float | None]) -> dict[str, float] | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"mean": round(float(np.mean(v)), 4), "sd": round(float(np.std(v)), 4), "min": round(float(np.min(v)), 4),
            "n": len(v)}


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rest = [r["rest"] for r in rows]
    other = [r["other_groups"] for r in rows]
    recalls = {c: _stat([r["recall"].get(c) for r in rest if r]) for c in CATEGORIES}
    names = rows[0].get("other_in_domain", {}) if rows else {}
    return {"balanced_accuracy": _stat([r["balanced_accuracy"] for r in rest if r]),
            "recall": {c: v for c, v in recalls.items() if v is not None},
            "other_groups_balanced_accuracy": _stat([r["balanced_accuracy"] for r in other if r]),
            "in_domain": _stat([r["in_domain"] for r in rows]),
            "other_in_domain": {n: _stat([r["other_in_domain"][n] for r in rows]) for n in names}}


def _ba(row: dict[str, Any]) -> float | None:
    return row["rest"]["balanced_accuracy"] if row.get("rest") else None


def _collect(rows: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per head the summary over draws; and the decision's behaviour under each writing policy: how often it
    writes, how often that was right (written: the adapted head is at least as good on the rest; not written:
    it is worse), and the balanced accuracy of what the lab ends up with (a refused adaptation is the base)."""
    out: dict[str, Any] = {name: _summarise([r[name] for r in rows]) for name in ("base", *methods)}
    draws = []
    for r in rows:
        b, a = _ba(r["base"]), _ba(r["prior"]) if "prior" in r else None
        if b is None or a is None or ("decision" in r and r["decision"] is None and r.get("categories_labelled", 2) > 1):
            continue
        d = r["decision"]
        draws.append({"base": round(b, 4), "adapted": round(a, 4), "decision": d})
    policies: dict[str, Any] = {}
    for name, rule in POLICIES.items():
        writes = [d["decision"] is not None and rule(d["decision"]) for d in draws]
        right = [(d["adapted"] >= d["base"]) if w else (d["adapted"] <= d["base"]) for d, w in zip(draws, writes)]
        policies[name] = {"writes": int(sum(writes)), "of": len(draws), "right": int(sum(right)),
                          "right_when_written": int(sum(r for r, w in zip(right, writes) if w)),
                          "balanced_accuracy": _stat([d["adapted"] if w else d["base"]
                                                      for d, w in zip(draws, writes)])}
    verdicts = [d["decision"]["items"][0] for d in draws if d["decision"] is not None]
    out["decision"] = {"policies": policies, "verdicts": {v: verdicts.count(i) for i, v in enumerate(VERDICTS)},
                       "helps": int(sum(d["adapted"] > d["base"] for d in draws)), "draws": draws}
    return out


def _mean(v: dict[str, Any] | None) -> str:
    return "–" if not v else f"{v['mean']:.3f}"


def _cell(v: dict[str, Any] | None) -> str:
    if not v:
        return "–"
    return f"{v['mean']:.2f} ± {v['sd']:.2f}"


def _at(entry: dict[str, Any], k: Any, method: str, key: str) -> Any:
    """One figure of the curve (None where that k was skipped or not measured)."""
    return entry["k"].get(str(k), {}).get(method, {}).get(key)


def write_to_card(model_dir: Path, report: dict[str, Any], command: str) -> None:
    """The curve into a model folder: its card's adaptation section (after the headline) and ``protocol.json``."""
    from cellview.train.domain import update_card

    update_card(Path(model_dir) / "MODEL_CARD.md", markdown(report, command), after="## Headline")
    protocol = Path(model_dir) / "protocol.json"
    if protocol.exists():
        data = json.loads(protocol.read_text(encoding="utf-8"))
        data["adaptation"] = report
        atomic_write_text(protocol, json.dumps(data, indent=2) + "\n")


def _policy(row: dict[str, Any], name: str) -> dict[str, Any]:
    return row.get("decision", {}).get("policies", {}).get(name, {})


def _behaviour(row: dict[str, Any], name: str) -> str:
    """'writes 9/10, right 8/10 (when written 8/9)' for one policy on one (source, k)."""
    p = _policy(row, name)
    if not p.get("of"):
        return "–"
    return (f"writes {p['writes']}/{p['of']}, right {p['right']}/{p['of']}"
            + (f" (when written {p['right_when_written']}/{p['writes']})" if p["writes"] else ""))


def _decision_rows(entries: dict[str, Any], ks: Sequence[Any], policy: str) -> list[str]:
    lines = [f"| source | k | no labels | adapted, every draw | with the decision ({POLICY_WORDS[policy]}) | "
             f"only when better | the old rule | verdicts: better / not distinguishable / worse | "
             f"the decision ({policy}) |", "|---|---|---|---|---|---|---|---|---|"]
    for src, e in entries.items():
        for k in ks:
            row = e["k"].get(str(k), {})
            if "decision" not in row or not _policy(row, policy).get("of"):
                continue
            v = row["decision"]["verdicts"]
            lines.append(f"| {src} | {k} | {_mean2(row['base']['balanced_accuracy'])} | "
                         f"{_mean2(row['prior']['balanced_accuracy'])} | "
                         f"**{_mean2(_policy(row, policy).get('balanced_accuracy'))}** | "
                         f"{_mean2(_policy(row, 'better').get('balanced_accuracy'))} | "
                         f"{_mean2(_policy(row, 'old').get('balanced_accuracy'))} | "
                         f"{v.get('better', 0)} / {v.get('not distinguishable', 0)} / {v.get('worse', 0)} | "
                         f"{_behaviour(row, policy)} |")
    return lines


def _verdict_summary(report: dict[str, Any], ks: Sequence[Any]) -> list[str]:
    """One paragraph over every decided draw: the verdicts, and how often adapting helped the rest."""
    out = []
    for part, words in (("sources", "a new source"), ("seen", "unseen patients of a training source")):
        draws = [d for e in report.get(part, {}).values() for k in ks
                 for d in e["k"].get(str(k), {}).get("decision", {}).get("draws", []) if d["decision"] is not None]
        if not draws:
            continue
        v = [d["decision"]["items"][0] for d in draws]
        out.append(f"{words}: {len(draws)} draws, verdicts better {v.count(0)}, not distinguishable {v.count(1)}, "
                   f"worse {v.count(2)}; the adapted head was at least as good as the base on the rest in "
                   f"{sum(d['adapted'] >= d['base'] for d in draws)}")
    if not out:
        return []
    return ["Over every draw with k = " + ", ".join(str(k) for k in ks) + ": " + "; ".join(out) + ". So with a "
            "handful of labels the interval rarely excludes zero either way, and what the command writes is nearly "
            "always the adapted model: keeping a source the model already handles from getting worse rests on the "
            "refit (the pull to the base head; classes of categories no label names keep the base head's weights), "
            "and the verdict tells the person how much their labels can show.", ""]


def _mean2(v: dict[str, Any] | None) -> str:
    return "–" if not v else f"{v['mean']:.2f}"


POLICY_WORDS = {"unless-worse": "written unless worse", "better": "written only when better",
                "old": "after > before", "always": "always written"}


def markdown(report: dict[str, Any], command: str) -> str:
    """The model card's adaptation section: the curve, the decision's behaviour per draw (a refused adaptation
    counts as the base model), unseen patients of the training sources, and suggested labels."""
    ks = report["ks"]
    k5 = TARGET_K if TARGET_K in ks else ks[0]
    policy = report.get("policy", "unless-worse")
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
    lines += ["", f"Recall per category at k = {k5} (no labels → adapted): " + "; ".join(recall_rows) + ".", "",
              "Labels that name only some of the categories (LC25000 has no benign tissue) refit only those "
              "categories' classes: the others keep the base head's weights and are not pushed away, because the "
              "labels cannot tell 'this lab has none' from 'none was labelled' (15 suggested images may hold no "
              "normal one)."]
    if other_rows:
        lines += ["", f"Tissue that is not colon, in domain before → after adapting with k = {k5} (what the lab's "
                      "means let in): " + "; ".join(other_rows) + "."]
    numeric = [k for k in ks if k != "all"]
    lines += ["", "### The decision, per draw", "",
              "`cellview adapt` decides from the change in balanced accuracy on the lab's own labels, cross-validated, "
              f"with its {round(report['settings'].get('interval', 0.9) * 100)} % bootstrap interval over the labelled "
              "images: *better* (the interval above zero), *not distinguishable*, or *worse* (below zero). By default "
              "the command writes the adapted model unless it is worse (exit status 3 and the words 'NOT shown "
              "better' when not distinguishable; `--if-uncertain keep-base` writes only when better, as the viewer "
              "does before the person chooses). Below, every draw of the curve went through that decision: a refused "
              "adaptation counts as the base model. 'Right': written and the adapted head at least as good on the "
              "rest of the source, or refused and it is worse. 'The old rule': after > before on the labelled images "
              "(ties to their tiles), the gate before issue 26.", "",
              *_verdict_summary(report, numeric),
              "New source (leave-one-source-out):", "", *_decision_rows(report["sources"], numeric, policy)]
    if report.get("seen"):
        lines += ["", "Unseen patients of a source the model was trained on (each grouped-CV fold's model, k labelled "
                      "images per category from that fold's held-out patients of the source, tested on the rest of "
                      "them; draws spread over the 5 folds). The target: no lower than the base − 0.02.", "",
                  *_decision_rows(report["seen"], numeric, policy)]
    n = report.get("suggested_n")
    if n:
        lines += ["", f"### {n} suggested images against {TARGET_K} hand-picked per category", "",
                  f"`cellview suggest`'s rule chose {n} images from a random 80 % of the pool (the lab's unlabelled "
                  "images; a new draw each time), they were labelled with their true category and adapted on, "
                  f"decision included; against {TARGET_K} images per category drawn at random (a person picking "
                  "by category). Both are scored on the rest of the pool.", "",
                  f"| source | no labels | {n} suggested, adapted | {n} suggested, with the decision | categories "
                  f"among them | {TARGET_K} per category, adapted | {TARGET_K} per category, with the decision |",
                  "|---|---|---|---|---|---|---|"]
        for part, entries in (("new source", report["sources"]), ("unseen patients", report.get("seen", {}))):
            for src, e in entries.items():
                s = e.get("suggested") or {}
                if "base" not in s:
                    continue
                hand = e["k"].get(str(TARGET_K), {})
                lines.append(f"| {src} ({part}) | {_mean2(s['base']['balanced_accuracy'])} | "
                             f"{_mean2(s['prior']['balanced_accuracy'])} | "
                             f"**{_mean2(_policy(s, policy).get('balanced_accuracy'))}** | "
                             f"{s['categories_labelled']['mean']:.1f} | "
                             f"{_mean2((hand.get('prior') or {}).get('balanced_accuracy'))} | "
                             f"**{_mean2(_policy(hand, policy).get('balanced_accuracy'))}** |")
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
