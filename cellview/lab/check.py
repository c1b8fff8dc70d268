"""Before vs after on the lab's own labels, cross-validated by image or slide (``cross_validate``).

Each fold refits the head without that file's tiles and scores them with both heads. Images and
regions are called by the confidence-weighted vote of their tiles' categories
(``results.image_calls``), the rule used to judge the shipped models. The adapted model is better when
it is better on that cross-validation (category balanced accuracy of the labelled images and regions;
ties go to the tiles).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellview.analysis.classifier import probabilities
from cellview.analysis.model_spec import CATEGORIES, ModelSpec
from cellview.analysis.pipeline import CancelToken
from cellview.analysis.results import category_probabilities, image_calls, plural
from cellview.lab.decision import Decision, decide
from cellview.lab.head import DEFAULT_SETTINGS, AdaptSettings, fit_head, label_weights
from cellview.lab.labtiles import AdaptProgress, LabTiles
from cellview.lab.plan import too_few


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


def unit_figures(probs: np.ndarray, unit: np.ndarray, unit_category: np.ndarray,
                 class_categories: Sequence[str]) -> Figures:
    """Unit calls by the vote rule, tile calls by their top category, against the labels' categories."""
    if not len(unit_category):  # nothing could be held out (one one-tile image per category)
        empty = {c: None for c in CATEGORIES}
        return Figures(float("nan"), float("nan"), empty, dict(empty), np.zeros((3, 3), np.int64).tolist())
    item_pred, _, _ = image_calls(probs, unit, len(unit_category), class_categories, "vote")
    item_true = np.asarray(unit_category)
    tile_pred = category_probabilities(probs, tuple(class_categories), "softmax").argmax(axis=1)
    tile_true = item_true[unit]
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


def figures(probs: np.ndarray, lab: LabTiles, class_categories: Sequence[str]) -> Figures:
    """``unit_figures`` with the lab's labelled images and regions as the units."""
    return unit_figures(probs, lab.item, np.array([CATEGORIES.index(it.category) for it in lab.items]),
                        class_categories)


@dataclass(frozen=True)
class CheckPlan:
    """How the labelled tiles are held out and scored: folds that keep every category in training.

    The units scored are the labelled images and regions; a category with a single one is scored by
    spatial blocks of its tiles instead (``level`` "block"), so holding one out never leaves a category
    without a label. Folds hold out whole files when every category is labelled in two files or more,
    else whole images / regions, else blocks.
    """

    unit: np.ndarray  # per tile: the scored unit (image, region or block)
    unit_category: np.ndarray  # per unit: index into CATEGORIES
    fold: np.ndarray  # per tile
    n_folds: int
    how: str
    level: str  # "file", "item" or "block"
    unchecked: tuple[str, ...] = ()  # categories with a single one-tile region: never held out, not scored
    single: tuple[str, ...] = ()  # categories with a single image or region (held out by blocks)


_PLURAL = {"image or slide": "images or slides", "labelled image or region": "labelled images or regions",
           "labelled region (one slide was labelled)": "labelled regions (one slide was labelled)",
           "spatial block of a labelled region (a category has only one)":
               "spatial blocks of labelled regions (a category has only one)"}


def _blocks(tiles: np.ndarray, position: np.ndarray | None, n_blocks: int) -> list[np.ndarray]:
    """Contiguous spatial blocks of one region's tiles: cut along its longer side into equal parts."""
    n = min(n_blocks, len(tiles))
    if position is None:
        order = tiles  # tiles come in reading order: consecutive ones are neighbours
    else:
        pos = position[tiles]
        axis = int(np.ptp(pos[:, 1]) > np.ptp(pos[:, 0]))
        order = tiles[np.lexsort((pos[:, 1 - axis], pos[:, axis]))]
    return [b for b in np.array_split(order, n) if len(b)]


def plan_check(lab: LabTiles, settings: AdaptSettings = DEFAULT_SETTINGS) -> CheckPlan:
    """The check's units and folds (class docstring)."""
    item_cat = np.array([CATEGORIES.index(it.category) for it in lab.items], np.int64)
    item_file = np.array([it.file for it in lab.items], np.int64)
    cats = np.unique(item_cat)
    files_per_cat = {int(c): len(np.unique(item_file[item_cat == c])) for c in cats}
    items_per_cat = {int(c): int((item_cat == c).sum()) for c in cats}
    unit = lab.item.copy()
    unit_category = item_cat.copy()
    unchecked: list[str] = []
    if len(lab.files) > 1 and min(files_per_cat.values()) >= 2:
        level, fold_unit = "file", lab.file
        what = "image or slide"
    elif min(items_per_cat.values()) >= 2:
        level, fold_unit = "item", lab.item
        what = "labelled image or region" if len(lab.files) > 1 else "labelled region (one slide was labelled)"
    else:
        level = "block"
        unit = np.full(len(lab.item), -1, np.int64)
        cats_of_units: list[int] = []
        for i, c in enumerate(item_cat):
            tiles = np.flatnonzero(lab.item == i)
            parts = _blocks(tiles, lab.position, settings.blocks) if items_per_cat[int(c)] == 1 else [tiles]
            if items_per_cat[int(c)] == 1 and len(parts) < 2:
                unchecked.append(CATEGORIES[int(c)])
                continue  # one tile: it stays in every fold's training and is not scored
            for part in parts:
                unit[part] = len(cats_of_units)
                cats_of_units.append(int(c))
        unit_category = np.array(cats_of_units, np.int64)
        fold_unit = unit
        what = "spatial block of a labelled region (a category has only one)"
    names = np.unique(fold_unit[fold_unit >= 0])
    fold_of = _deal(names, fold_unit, lab.category, settings)
    fold = np.array([fold_of.get(int(u), -1) for u in fold_unit], np.int64)
    n_folds = int(fold.max()) + 1 if (fold >= 0).any() else 0
    how = (f"{n_folds} folds of whole {_PLURAL.get(what, what)}" if n_folds < len(names)
           else f"one fold per {what}" if n_folds else "nothing held out: each category has one image of one tile")
    single = tuple(CATEGORIES[int(c)] for c in cats if items_per_cat[int(c)] == 1) if level == "block" else ()
    return CheckPlan(unit, unit_category, fold, n_folds, how, level, tuple(unchecked), single)


def _deal(names: np.ndarray, fold_unit: np.ndarray, category: np.ndarray,
          settings: AdaptSettings) -> dict[int, int]:
    """Fold of each unit: one each, or (more than ``max_folds``) dealt out by category so no fold holds a
    category's every unit."""
    if len(names) <= settings.max_folds:
        return {int(n): i for i, n in enumerate(names)}
    rng = np.random.default_rng(settings.seed)
    # A unit's category for dealing: its rarest one (a file may hold several).
    counts = np.bincount(category, minlength=len(CATEGORIES))
    key = {int(n): int(min(np.unique(category[fold_unit == n]), key=lambda c: counts[c])) for n in names}
    order = sorted(names.tolist(), key=lambda n: (key[n], rng.random()))
    fold_of = {int(n): i % settings.max_folds for i, n in enumerate(order)}
    fold = np.array([fold_of.get(int(u), -1) for u in fold_unit])
    present = set(np.unique(category).tolist())
    if all(set(np.unique(category[(fold != k) & (fold >= 0)]).tolist()) >= present
           for k in range(settings.max_folds)):
        return fold_of
    return {int(n): i for i, n in enumerate(names)}  # dealing failed: one fold per unit


@dataclass(frozen=True)
class CheckResult:
    """Before vs after on tiles never fitted on, and the decision it supports."""

    before: Figures
    after: Figures
    how: str
    folds: int
    decision: Decision
    plan: CheckPlan = field(compare=False, repr=False)
    after_logits: np.ndarray = field(compare=False, repr=False, default_factory=lambda: np.zeros(0))
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = field(compare=False, repr=False, default_factory=dict)


def _unit_scores(probs: np.ndarray, unit: np.ndarray, unit_category: np.ndarray,
                 class_categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: 1/0 for its vote call being right, and the share of its tiles called right."""
    n = len(unit_category)
    pred, _, _ = image_calls(probs, unit, n, class_categories, "vote")
    tile_pred = category_probabilities(probs, tuple(class_categories), "softmax").argmax(axis=1)
    right = (tile_pred == unit_category[unit]).astype(np.float64)
    share = np.bincount(unit, weights=right, minlength=n) / np.maximum(np.bincount(unit, minlength=n), 1)
    return (pred == unit_category).astype(np.float64), share


def cross_validate(lab: LabTiles, spec: Any, base_weight: np.ndarray, base_bias: np.ndarray,
                   settings: AdaptSettings = DEFAULT_SETTINGS, cancel: CancelToken | None = None,
                   ) -> Iterator[AdaptProgress | CheckResult]:
    """Before vs after on tiles never fitted on: per fold, refit without it and score it with both heads.

    ``spec``: the base model (its ``activation``, ``temperature`` and ``class_categories``).
    """
    cancel = cancel or CancelToken()
    plan = plan_check(lab, settings)
    cats = lab.category
    after_logits = lab.base_logits.copy()
    for k in range(plan.n_folds):
        if cancel.cancelled:
            return
        yield AdaptProgress("fitting", k, plan.n_folds + 1, f"cross-validation fold {k + 1} of {plan.n_folds}")
        held = plan.fold == k
        train = ~held
        w, b = fit_head(lab.features[train], lab.allowed[train], label_weights(cats[train], lab.item[train]),
                        base_weight, base_bias, settings, spec.class_categories)
        after_logits[held] = lab.features[held] @ w.T + b
    scored = plan.unit >= 0
    unit = plan.unit[scored]
    probs_b = probabilities(lab.base_logits[scored], spec.activation, spec.temperature)
    probs_a = probabilities(after_logits[scored], spec.activation, spec.temperature)
    before = unit_figures(probs_b, unit, plan.unit_category, spec.class_categories)
    after = unit_figures(probs_a, unit, plan.unit_category, spec.class_categories)
    (calls_b, share_b), (calls_a, share_a) = (_unit_scores(p, unit, plan.unit_category, spec.class_categories)
                                              for p in (probs_b, probs_a))
    b_score, a_score = (calls_b, calls_a) if settings.measure == "items" else (share_b, share_a)
    decision = decide(b_score, a_score, plan.unit_category, settings.measure, settings.interval, settings.bootstrap,
                      settings.seed)
    if not len(plan.unit_category):
        decision = replace(decision, note="no labelled image or region could be held out (each category has one, "
                                          "of one tile)")
    elif plan.level == "block" and decision.better:  # blocks of one region look alike: the check is optimistic
        decision = replace(decision, verdict="not distinguishable",
                           note="blocks of one region were held out, which flatters the adapted head")
    yield CheckResult(before, after, plan.how, plan.n_folds, decision, plan, after_logits,
                      {"items": (calls_b, calls_a), "tiles": (share_b, share_a)})


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
    improved: bool  # the decision says better
    written: Path | None = None
    sidecar: dict[str, Any] = field(default_factory=dict, compare=False)
    seconds: float = 0.0
    decision: Decision | None = None
    written_because: str = ""  # "better", "chosen" (not distinguishable, and the person took it) or "forced"

    def summary(self) -> str:
        """The before / after line the CLI prints and the viewer's dialog leads with."""
        b, a = self.before, self.after
        return (f"Before → after on your labels ({self.cv_how}): balanced accuracy of the labelled images / regions "
                f"{_f(b.items_balanced_accuracy)} → {_f(a.items_balanced_accuracy)}; of their tiles "
                f"{_f(b.tiles_balanced_accuracy)} → {_f(a.tiles_balanced_accuracy)} "
                f"({plural(len(self.lab.items), 'labelled image or region', 'labelled images or regions')}, "
                f"{plural(len(self.lab.features), 'tile')}, {plural(len(self.lab.files), 'file')})."
                + (f" The adapted head is {self.decision.phrase()}." if self.decision is not None else ""))


def _f(v: float) -> str:
    return "–" if v != v else f"{v:.2f}"


def label_warnings(lab: LabTiles, spec: ModelSpec) -> list[str]:
    """A category with too few labelled images or regions (as read: connected patches of tiles), and how many
    more would help."""
    present = [c for c in CATEGORIES if c in spec.class_categories]
    counts = {c: sum(it.category == c for it in lab.items) for c in present}
    return too_few(counts, present)
