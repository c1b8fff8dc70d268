"""Leave-one-source-out and grouped cross-validation of a run's recipe, on its cached features.

Each fold trains the run's recipe from the pretrained network (``train.fit_model``, the function that
made the run's own weights, with its fixed epochs) on the training folds' cached views and classifies
the held-out images' cached evaluation tiles, which are the tiles ``cellview analyze`` classifies for
those images. Leave-one-source-out (LOSO) trains on all sources but one and tests on that one, for each
source; grouped k-fold cross-validation (CV) splits whole groups (patients, source fields) so that no
group is on both sides. Every image is tested once per protocol.

Image-level calls, per image from its tiles' calibrated probabilities:
- ``vote``: the confidence-weighted vote of the tiles' predicted categories (weight = the tile's
  category confidence), the rule the issue's external check applies to ``cellview analyze``'s CSV;
- ``mean``: the category of the mean of the tiles' probabilities (``AnalysisResult.image_level``).
An image with no tile (no tissue found) has no call and counts as wrong.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellview.analysis.classifier import probabilities
from cellview.analysis.model_spec import CATEGORIES
from cellview.analysis.results import RULES, category_probabilities, image_calls
from cellview.train import data as D
from cellview.train.metrics import balanced_accuracy, confusion, ece, fit_temperature
from cellview.train.splits import group_split

PROTOCOLS = ("loso", "cv")


@dataclass(frozen=True)
class Fold:
    protocol: str
    name: str
    train: np.ndarray  # bool per sample
    test: np.ndarray


def make_folds(samples: Sequence[D.Sample], protocol: str, n_folds: int = 5, seed: int = 0) -> list[Fold]:
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    if protocol == "loso":
        names = sorted(set(sources.tolist()))
        if len(names) < 2:
            return []
        return [Fold("loso", f"without {src}", sources != src, sources == src) for src in names]
    if protocol == "cv":
        fold = group_split(labels, [s.group for s in samples], [1.0] * n_folds, seed)
        return [Fold("cv", f"fold {k}", fold != k, fold == k) for k in range(n_folds)]
    raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


def _recalls(y: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    return {n: (round(float((pred[y == i] == i).mean()), 4) if (y == i).any() else None) for i, n in enumerate(names)}


def metrics(tile_logits: np.ndarray, tile_sample: np.ndarray, tested: np.ndarray, labels: np.ndarray,
            sources: np.ndarray, class_names: Sequence[str], class_categories: Sequence[str],
            temperature: float = 1.0) -> dict[str, Any]:
    """Per source and over all tested samples: both rules' category figures, fine classes, calibration."""
    n = len(labels)
    probs = probabilities(tile_logits, "softmax", temperature)
    cat_idx = np.array([CATEGORIES.index(c) for c in class_categories])
    y_cat = cat_idx[labels]
    calls = {rule: image_calls(probs, tile_sample, n, class_categories, rule) for rule in RULES}
    tile_cat = category_probabilities(probs, tuple(class_categories), "softmax")
    out: dict[str, Any] = {}
    for src in [*sorted(set(sources[tested].tolist())), "all"]:
        m = tested & ((sources == src) if src != "all" else True)
        tm = m[tile_sample]
        entry: dict[str, Any] = {"images": int(m.sum()), "tiles": int(tm.sum()),
                                 "images_without_tiles": int((calls["vote"][0][m] < 0).sum())}
        present = [c for c in range(len(CATEGORIES)) if (y_cat[m] == c).any()]
        for rule in RULES:
            pred, scores, pred_class = calls[rule]
            yc, pc = y_cat[m], pred[m]
            bal = float(np.mean([(pc[yc == c] == c).mean() for c in present])) if present else float("nan")
            has = pc >= 0
            entry[rule] = {
                "category_balanced_accuracy": round(bal, 4),
                "category_accuracy": round(float((pc == yc).mean()), 4),
                "category_recall": _recalls(yc, pc, CATEGORIES),
                "category_confusion": confusion(yc[has], pc[has], len(CATEGORIES)).tolist(),
                "class_balanced_accuracy": round(balanced_accuracy(labels[m], pred_class[m]), 4),
                "class_recall": _recalls(labels[m], pred_class[m], class_names),
                "ece_category": round(ece(scores[m][has], yc[has])[0], 4) if has.any() else None,
            }
        if tm.any():
            entry["tile_category_accuracy"] = round(float((tile_cat[tm].argmax(1) == y_cat[tile_sample[tm]]).mean()), 4)
            entry["tile_ece_category"] = round(ece(tile_cat[tm], y_cat[tile_sample[tm]])[0], 4)
        out[src] = entry
    return out


# ----------------------------------------------------------------------------- running the folds


def _signature(cfg: Any, fold: Fold) -> str:
    payload = {"cfg": {k: v for k, v in asdict(cfg).items() if k not in ("device", "threads", "group")},
               "fold": fold.name, "protocol": fold.protocol, "train": np.flatnonzero(fold.train).tolist(),
               "test": np.flatnonzero(fold.test).tolist()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fold_stem(work: Path, cfg: Any, fold: Fold) -> Path:
    """Where a fold's trained weights (``.pt``) and its test tiles' logits live (without suffix)."""
    return work / f"{fold.protocol}-{fold.name.replace(' ', '_')}-{_signature(cfg, fold)}"


def _cache_tag(run: Any, name: str) -> str:
    """Changes when a cached feature set is recomputed, so logits of its old tiles are never reused."""
    stat = (run.cache / f"{name}.npy").stat()
    return hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:8]


def run_folds(run: Any, recipe: D.Recipe, samples: list[D.Sample], cfg: Any, folds: Sequence[Fold], work: Path,
              eval_names: dict[str, str] | None = None, say: Any = None) -> dict[str, dict[str, Any]]:
    """Train every fold and collect its test tiles' logits; resumable.

    A fold's trained weights (``<fold>-<signature>.pt``) and each evaluation set's logits
    (``…-<label>.npz``) are kept in ``work``: a later call with more evaluation sets reuses them.
    ``eval_names``: label → cached evaluation set (default {"plain": "eval"}); ``{ref}`` in a name becomes
    ``no-<source>`` for a LOSO fold (a stain reference without the held-out source) and ``all`` for CV.
    Returns {protocol: {label: (tile_logits, tile_sample), "_seconds": [per fold]}}.
    """
    import torch

    from cellview.train.train import (
        FitData,
        build_model,
        fit_model,
        pretrained_pooled,
        save_torch,
        seed_everything,
        tile_logits,
    )

    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    eval_names = eval_names or {"plain": "eval"}
    work.mkdir(parents=True, exist_ok=True)
    data: FitData | None = None
    out: dict[str, dict[str, Any]] = {}
    for fold in folds:
        ref = f"no-{fold.name.removeprefix('without ')}" if fold.protocol == "loso" else "all"
        names = {k: v.replace("{ref}", ref) for k, v in eval_names.items()}
        stem = fold_stem(work, cfg, fold)
        weights, seconds_file = stem.with_suffix(".pt"), stem.with_suffix(".seconds")
        model = None
        if not weights.exists():
            t = time.time()
            data = data or FitData.from_run(run, recipe, samples, cfg)
            seed_everything(cfg.seed)
            _, model = build_model(recipe, cfg, pretrained=cfg.pretrained)
            fit_model(model, data, fold.train, cfg, "cpu", desc=f" [{fold.protocol} {fold.name}]")
            save_torch(weights, model.state_dict())
            seconds_file.write_text(f"{time.time() - t:.1f}\n")
            say(f"{fold.protocol} {fold.name}: trained in {time.time() - t:.0f} s")
        for label, name in names.items():
            path = Path(f"{stem}-{name}-{_cache_tag(run, name)}.npz")
            if not path.exists():
                if model is None:
                    _, model = build_model(recipe, cfg, pretrained=False)
                    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
                    model.eval()
                if cfg.finetune_blocks == 0:  # the tail is the pretrained one: its pooled features are cached
                    feats, index = pretrained_pooled(run, name, recipe, cfg)
                    depth = 0
                else:
                    feats, index = run.features(name)
                    depth = cfg.cache_depth
                keep = fold.test[index]
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, logits=tile_logits(model, feats[keep], depth), index=index[keep])
                tmp.replace(path)
            got = np.load(path)
            acc = out.setdefault(fold.protocol, {}).setdefault(label, ([], []))
            acc[0].append(got["logits"])
            acc[1].append(got["index"])
        out[fold.protocol].setdefault("_seconds", []).append(float(seconds_file.read_text()))
    result: dict[str, dict[str, Any]] = {}
    for protocol, per in out.items():
        result[protocol] = {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in per.items() if k != "_seconds"}
        result[protocol]["_seconds"] = per["_seconds"]
    return result


def protocol_report(logits: dict[str, dict[str, Any]], samples: list[D.Sample], recipe: D.Recipe,
                    folds: dict[str, list[Fold]], temperature: float | None = None,
                    subsets: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Metrics per protocol and evaluation set, at T = 1 and at the temperature fitted on CV out-of-fold tiles."""
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    cats = [c.category for c in recipe.classes]
    if temperature is None:
        temperature = 1.0
        if "cv" in logits and "plain" in logits["cv"]:
            lg, idx = logits["cv"]["plain"]
            temperature = fit_temperature(lg, labels[idx], idx) if len(lg) else 1.0
    report: dict[str, Any] = {"temperature": temperature,
                              "temperature_note": "fitted on the grouped-CV out-of-fold tiles (image-level NLL)"}
    for protocol, per in logits.items():
        entry: dict[str, Any] = {"fold_seconds": [round(s, 1) for s in per["_seconds"]],
                                 "folds": [f.name for f in folds.get(protocol, [])]}
        for label, value in per.items():
            if label.startswith("_"):
                continue
            lg, idx = value
            tested = np.zeros(len(samples), bool)
            for f in folds.get(protocol, []):
                tested |= f.test
            if subsets and label in subsets:
                tested &= subsets[label]
                keep = tested[idx]
                lg, idx = lg[keep], idx[keep]
            entry[label] = metrics(lg, idx, tested, labels, sources, recipe.class_names, cats, temperature)
        report[protocol] = entry
    return report


def headline(report: dict[str, Any], rule: str = "vote", label: str = "plain") -> dict[str, Any]:
    """The figures the card leads with: per protocol and source, category balanced accuracy and recalls."""
    out: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        if protocol not in report or label not in report[protocol]:
            continue
        per = report[protocol][label]
        out[protocol] = {src: {"category_balanced_accuracy": v[rule]["category_balanced_accuracy"],
                               "recall": v[rule]["category_recall"], "images": v["images"]}
                         for src, v in per.items()}
        srcs = [v[rule]["category_balanced_accuracy"] for s, v in per.items() if s != "all"]
        out[protocol]["mean_over_sources"] = round(float(np.mean(srcs)), 4) if srcs else None
        out[protocol]["worst_source"] = round(float(np.min(srcs)), 4) if srcs else None
    return out


def markdown_tables(report: dict[str, Any], label: str = "plain") -> str:
    """Per protocol: one row per source and rule, then the category confusion matrices (vote rule)."""
    lines: list[str] = []
    titles = {"loso": "Leave-one-source-out (trained on the other sources)",
              "cv": "Patient / source-group grouped 5-fold cross-validation"}
    for protocol in PROTOCOLS:
        if protocol not in report or label not in report[protocol]:
            continue
        per = report[protocol][label]
        lines += [f"#### {titles[protocol]}", "",
                  "| held-out source | images | rule | category bal. acc. | recall malignant | recall benign | "
                  "recall normal | class bal. acc. | ECE (category) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for src, v in per.items():
            for rule in RULES:
                r = v[rule]
                rec = [("–" if r["category_recall"][c] is None else f"{r['category_recall'][c]:.3f}") for c in CATEGORIES]
                ece_txt = "–" if r["ece_category"] is None else f"{r['ece_category']:.3f}"
                lines.append(f"| {src} | {v['images']} | {rule} | **{r['category_balanced_accuracy']:.3f}** | "
                             f"{' | '.join(rec)} | {r['class_balanced_accuracy']:.3f} | {ece_txt} |")
        lines += ["", "Category confusion, vote rule (rows true, columns predicted: malignant / benign / normal; "
                      "images without a tile are left out):", ""]
        for src, v in per.items():
            m = v["vote"]["category_confusion"]
            lines.append(f"- {src}: " + "; ".join(f"{CATEGORIES[i]} {m[i]}" for i in range(3) if sum(m[i])))
        lines.append("")
    return "\n".join(lines)
