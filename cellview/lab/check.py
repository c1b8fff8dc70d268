"""Before vs after on the lab's own labels, cross-validated by image or slide (``cross_validate``).

Each fold refits the head without that file's tiles and scores them with both heads. Images and
regions are called by the confidence-weighted vote of their tiles' categories
(``results.image_calls``), the rule used to judge the shipped models. The adapted model is better when
it is better on that cross-validation (category balanced accuracy of the labelled images and regions;
ties go to the tiles).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellview.analysis.model import CATEGORIES, ModelSpec, probabilities
from cellview.analysis.pipeline import CancelToken
from cellview.analysis.results import category_probabilities, image_calls, plural
from cellview.lab.head import DEFAULT_SETTINGS, AdaptSettings, fit_head, label_weights
from cellview.lab.labtiles import AdaptProgress, LabTiles

RECOMMENDED_PER_CATEGORY = 5
"""Labelled images or regions per category below which ``adapt`` warns (where the evaluation's gain levels off)."""


@dataclass(frozen=True)
class Figures:
    """One head's figures on the lab's labels: category balanced accuracy and recalls, of items and of tiles."""

    items_balanced_accuracy: float
    tiles_balanced_accuracy: float
    items_recall: dict[str, float | None]
    tiles_recall: dict[str, float | None]
    items_confusion: list[list[int]]

    def as_dict(self) -> dict[str, Any]:
        return {"items_category_balanced_accuracy": round(self.items_balanced_accuracy, 4),
                "tiles_category_balanced_accuracy": round(self.tiles_balanced_accuracy, 4),
                "items_recall": self.items_recall, "tiles_recall": self.tiles_recall,
                "items_confusion": self.items_confusion}


def figures(probs: np.ndarray, lab: LabTiles, class_categories: Sequence[str]) -> Figures:
    """Item calls by the vote rule, tile calls by their top category, against the labels' categories."""
    n_items = len(lab.items)
    item_pred, _, _ = image_calls(probs, lab.item, n_items, class_categories, "vote")
    item_true = np.array([CATEGORIES.index(it.category) for it in lab.items])
    tile_pred = category_probabilities(probs, tuple(class_categories), "softmax").argmax(axis=1)
    tile_true = item_true[lab.item]
    present = sorted(set(item_true.tolist()))

    def rec(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
        return {c: (round(float((p[y == k] == k).mean()), 4) if (y == k).any() else None)
                for k, c in enumerate(CATEGORIES)}

    conf = np.zeros((3, 3), np.int64)
    ok = item_pred >= 0
    np.add.at(conf, (item_true[ok], item_pred[ok]), 1)
    return Figures(float(np.mean([(item_pred[item_true == k] == k).mean() for k in present])),
                   float(np.mean([(tile_pred[tile_true == k] == k).mean() for k in present])),
                   rec(item_true, item_pred), rec(tile_true, tile_pred), conf.tolist())


def better(after: Figures, before: Figures) -> bool:
    """The adapted head is better: more balanced accuracy on the labelled images and regions, or as much
    and more on their tiles."""
    a, b = round(after.items_balanced_accuracy, 6), round(before.items_balanced_accuracy, 6)
    if a != b:
        return a > b
    return round(after.tiles_balanced_accuracy, 6) > round(before.tiles_balanced_accuracy, 6)


def _folds(lab: LabTiles, settings: AdaptSettings) -> tuple[np.ndarray, str]:
    """Fold number per tile: by file (image or slide); by labelled region when only one file was labelled."""
    by_file = len(lab.files) > 1
    unit = lab.file if by_file else lab.item
    names = np.unique(unit)
    if len(names) > settings.max_folds:
        order = np.random.default_rng(settings.seed).permutation(len(names))
        fold_of = dict(zip(names.tolist(), (order % settings.max_folds).tolist()))
        how = f"{settings.max_folds} folds of whole {'images or slides' if by_file else 'regions'}"
    else:
        fold_of = {n: i for i, n in enumerate(names.tolist())}
        how = "one fold per " + ("image or slide" if by_file else "labelled region (one slide was labelled)")
    return np.array([fold_of[int(u)] for u in unit], np.int64), how


def cross_validate(lab: LabTiles, spec: ModelSpec, base_weight: np.ndarray, base_bias: np.ndarray,
                   settings: AdaptSettings = DEFAULT_SETTINGS, cancel: CancelToken | None = None,
                   ) -> Iterator[AdaptProgress | dict[str, Any]]:
    """Before vs after on tiles never fitted on: per fold, refit without it and score it with both heads."""
    cancel = cancel or CancelToken()
    fold, how = _folds(lab, settings)
    n_folds = int(fold.max()) + 1
    cats = lab.category
    items = lab.item
    after_logits = np.zeros_like(lab.base_logits)
    for k in range(n_folds):
        if cancel.cancelled:
            return
        yield AdaptProgress("fitting", k, n_folds + 1, f"cross-validation fold {k + 1} of {n_folds}")
        train = fold != k
        if not train.any():
            after_logits[~train] = lab.base_logits[~train]
            continue
        w, b = fit_head(lab.features[train], lab.allowed[train], label_weights(cats[train], items[train]),
                        base_weight, base_bias, settings)
        after_logits[~train] = lab.features[~train] @ w.T + b
    before = figures(probabilities(lab.base_logits, spec.activation, spec.temperature), lab, spec.class_categories)
    after = figures(probabilities(after_logits, spec.activation, spec.temperature), lab, spec.class_categories)
    yield {"folds": n_folds, "how": how, "before": before, "after": after}


@dataclass(frozen=True)
class AdaptReport:
    """What ``adapt`` measured and wrote (``written`` is None when it wrote nothing)."""

    base: ModelSpec
    lab: LabTiles
    before: Figures
    after: Figures
    cv_how: str
    cv_folds: int
    warnings: tuple[str, ...]
    improved: bool
    written: Path | None = None
    sidecar: dict[str, Any] = field(default_factory=dict, compare=False)
    seconds: float = 0.0

    def summary(self) -> str:
        """The before / after line the CLI prints and the viewer's dialog leads with."""
        b, a = self.before, self.after
        return (f"Before → after on your labels ({self.cv_how}): balanced accuracy of the labelled images / regions "
                f"{b.items_balanced_accuracy:.2f} → {a.items_balanced_accuracy:.2f}; of their tiles "
                f"{b.tiles_balanced_accuracy:.2f} → {a.tiles_balanced_accuracy:.2f} "
                f"({plural(len(self.lab.items), 'labelled image or region', 'labelled images or regions')}, "
                f"{plural(len(self.lab.features), 'tile')}, {plural(len(self.lab.files), 'file')}).")


def label_warnings(lab: LabTiles, spec: ModelSpec) -> list[str]:
    """A category with too few labelled images or regions, and how many more would help."""
    out = []
    present = [c for c in CATEGORIES if c in spec.class_categories]
    for c in present:
        n = sum(it.category == c for it in lab.items)
        if n < RECOMMENDED_PER_CATEGORY:
            more = RECOMMENDED_PER_CATEGORY - n
            what = "none labelled" if n == 0 else f"only {n} labelled image{'s' if n != 1 else ''} or region{'s' if n != 1 else ''}"
            out.append(f"{c}: {what}; label {more} more, from other slides or images — about "
                       f"{RECOMMENDED_PER_CATEGORY} per category is where the gain levels off in leave-one-source-out"
                       + (f"; without any, the model keeps its own {c} calls" if n == 0 else ""))
    return out

