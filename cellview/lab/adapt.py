"""``cellview adapt``: a lab's labelled tiles refit the model's linear head, with an honest before / after.

No network is trained and nothing needs torch: the base model's pooled ``features`` of the lab's
labelled tiles (cut exactly as ``cellview analyze`` cuts them: same spacing, tissue rule and stain
option) train a new linear head by weighted softmax regression with an L2 pull towards the shipped
head (``fit_head``). The pull keeps the base model's knowledge where the lab gave no labels; the
method was chosen over replaying a bank of the training tiles' features by leave-one-source-out
(``cellview evaluate --adaptation``; figures in the colon model's card).

Labels may name a model class or a category (then any class of that category is right: the loss is
on the category's probability). Every labelled category weighs the same, and within it every
labelled image or region.

Before vs after is cross-validated by image or slide: each fold refits the head without that file's
tiles and scores them with both heads (``cross_validate``). Images and regions are called by the
confidence-weighted vote of their tiles' categories (``results.image_calls``), the rule used to judge
the shipped models. The adapted model is written only when it is better on that cross-validation
(category balanced accuracy of the labelled images and regions; ties go to the tiles), unless forced.

The written folder is a complete model: the base ONNX with the new head (``onnx_graph.
replace_linear_head``: features, feature maps and activation maps unchanged), its FP16 copy when the
base has one, a sidecar with provenance, the out-of-domain statistics with the lab's tissue added
(``domain.with_lab``), an ``adaptation.json`` report and a generated model card.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellview import __version__
from cellview.analysis.classifier import OnnxClassifier, probabilities
from cellview.analysis.model_spec import CATEGORIES, ModelSpec, precision_copy, sha256_file, sidecar_for
from cellview.analysis.pipeline import (
    CancelToken,
    TileReaders,
    apply_reading,
    batch_indices,
    plan_tiles,
    slide_stain_transform,
)
from cellview.analysis.results import AnalysisParams, category_probabilities, image_calls, plural
from cellview.base.errors import CellviewError, ModelError, SlideError
from cellview.base.files import atomic_write_bytes, atomic_write_text
from cellview.lab.labels import LabelError, LabelSource, tile_labels
from cellview.slides.opening import open_slide

RECOMMENDED_PER_CATEGORY = 5
"""Labelled images or regions per category below which ``adapt`` warns (where the evaluation's gain levels off)."""

ADAPTATION_FILE = "adaptation.json"


class AdaptError(CellviewError):
    """Adaptation cannot run, or its result is not written (the message says why, with the figures)."""


@dataclass(frozen=True)
class AdaptSettings:
    """How the head is refitted (the defaults are the ones the leave-one-source-out protocol chose)."""

    l2_to_base: float = 1.8e-4  # pull towards the base head, per mean square of the base weights (0.01 for colon-he)
    iterations: int = 300
    learning_rate: float = 0.075  # Adam's step, as a fraction of the base weights' RMS (0.01 for colon-he)
    max_tiles_per_file: int = 1000  # a whole slide labelled by one row: a random sample of its tiles
    max_folds: int = 20  # more files than this: grouped folds instead of one fold per file
    seed: int = 0


DEFAULT_SETTINGS = AdaptSettings()


# ----------------------------------------------------------------------------- the head


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_head(features: np.ndarray, allowed: np.ndarray, weights: np.ndarray, base_weight: np.ndarray,
             base_bias: np.ndarray, settings: AdaptSettings = DEFAULT_SETTINGS) -> tuple[np.ndarray, np.ndarray]:
    """A linear head for the labelled tiles, pulled towards the base head.

    Minimises ``Σ wᵢ · −log Σ_{c ∈ allowedᵢ} softmax(W xᵢ + b)_c / Σ w + λ/2 (‖W − W₀‖² + ‖b − b₀‖²) / s²``
    by full-batch Adam from (W₀, b₀), where s is the RMS of W₀: a class label allows one class, a
    category label all of its classes. The pull and Adam's step (``learning_rate`` · s) follow the base
    head's scale, so a head trained at another scale moves as far in as many steps. NumPy only,
    deterministic, about a second for a few thousand tiles.
    """
    x = np.asarray(features, np.float64)
    a = np.asarray(allowed, bool)
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    w0 = np.asarray(base_weight, np.float64)
    b0 = np.asarray(base_bias, np.float64)
    weight, bias = w0.copy(), b0.copy()
    scale = max(float(np.sqrt((w0 * w0).mean())), 0.1)
    lam = settings.l2_to_base / scale**2
    rate = settings.learning_rate * scale
    m_w, v_w, m_b, v_b = np.zeros_like(weight), np.zeros_like(weight), np.zeros_like(bias), np.zeros_like(bias)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, settings.iterations + 1):
        p = _softmax(x @ weight.T + bias)
        q = p * a
        q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
        g = (p - q) * w[:, None]  # gradient of the loss on the logits
        g_w = g.T @ x + lam * (weight - w0)
        g_b = g.sum(axis=0) + lam * (bias - b0)
        m_w = beta1 * m_w + (1 - beta1) * g_w
        v_w = beta2 * v_w + (1 - beta2) * g_w * g_w
        m_b = beta1 * m_b + (1 - beta1) * g_b
        v_b = beta2 * v_b + (1 - beta2) * g_b * g_b
        step = rate * np.sqrt(1 - beta2**t) / (1 - beta1**t)
        weight -= step * m_w / (np.sqrt(v_w) + eps)
        bias -= step * m_b / (np.sqrt(v_b) + eps)
    return weight.astype(np.float32), bias.astype(np.float32)


def label_weights(categories: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Every labelled category the same total, within it every image or region the same, then every tile."""
    categories = np.asarray(categories)
    items = np.asarray(items)
    w = np.zeros(len(categories))
    present = np.unique(categories)
    for c in present:
        in_c = categories == c
        its = np.unique(items[in_c])
        for it in its:
            m = in_c & (items == it)
            w[m] = 1.0 / m.sum() / len(its) / len(present)
    return w


# ----------------------------------------------------------------------------- labels → classes


def source_labels(source: LabelSource) -> list[str]:
    """The labels one image or slide gives (its own, or its regions' but Ignore*)."""
    return [source.label] if source.label is not None else [r.label for r in source.regions if not r.is_ignore]


@dataclass(frozen=True)
class LabelTarget:
    """A label as the model understands it: the classes it allows and their category."""

    label: str  # canonical: the class name or the category, as the model spells it
    allowed: tuple[bool, ...]
    category: str


def label_targets(labels: Sequence[str], spec: ModelSpec) -> dict[str, LabelTarget]:
    """Each distinct label → its target; LabelError naming every valid name when one is unknown."""
    classes = {c.lower(): i for i, c in enumerate(spec.class_names)}
    present = [c for c in CATEGORIES if c in spec.class_categories]
    out: dict[str, LabelTarget] = {}
    unknown = []
    for label in dict.fromkeys(labels):
        key = label.strip().lower()
        if key in classes:
            i = classes[key]
            allowed = tuple(j == i for j in range(spec.num_classes))
            out[label] = LabelTarget(spec.class_names[i], allowed, spec.class_categories[i])
        elif key in present:
            allowed = tuple(c == key for c in spec.class_categories)
            out[label] = LabelTarget(key, allowed, key)
        else:
            unknown.append(label)
    if unknown:
        valid = ", ".join(dict.fromkeys([*present, *spec.class_names]))
        raise LabelError(f"Unknown label{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(u) for u in unknown)} for the model {spec.name}: use a category or a class "
                         f"of the model (case does not matter): {valid}.")
    return out


# ----------------------------------------------------------------------------- reading the lab's tiles


@dataclass(frozen=True)
class LabItem:
    """One labelled image, or one connected patch of same-label tiles on a slide: the unit that gets a call."""

    file: int  # index into LabTiles.files
    label: str  # canonical label
    category: str
    n_tiles: int


@dataclass(frozen=True)
class LabTiles:
    """The lab's labelled tiles with the base model's outputs: what fitting and cross-validation need."""

    files: tuple[str, ...]  # the images / slides, as given
    items: tuple[LabItem, ...]
    features: np.ndarray  # (N, D) float32
    base_logits: np.ndarray  # (N, K) float32
    allowed: np.ndarray  # (N, K) bool
    item: np.ndarray  # (N,) index into items
    unreadable: tuple[tuple[str, str], ...] = ()  # (file, reason): listed, and the rest went on
    notes: tuple[str, ...] = ()

    @property
    def file(self) -> np.ndarray:
        return np.array([it.file for it in self.items], np.int64)[self.item]

    @property
    def category(self) -> np.ndarray:
        return np.array([CATEGORIES.index(it.category) for it in self.items], np.int64)[self.item]

    @property
    def label(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=object)[self.item]


@dataclass(frozen=True)
class AdaptProgress:
    """Progress of one stage (``reading``, ``fitting``, ``writing``): ``done`` of ``total`` units."""

    stage: str
    done: int
    total: int
    message: str = ""


def _components(grid: Any, labelled: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Connected patches (8-neighbours on the grid) of tiles with the same label: item number per tile, -1 none."""
    import cv2

    out = np.full(grid.n_tiles, -1, np.int64)
    nxt = 0
    for label in sorted({str(v) for v in labels[labelled]}):
        mask = np.zeros((grid.n_rows, grid.n_cols), np.uint8)
        sel = np.flatnonzero(labelled & (labels == label))
        mask[grid.grid_row[sel], grid.grid_col[sel]] = 1
        n, comp = cv2.connectedComponents(mask, connectivity=8)
        out[sel] = comp[grid.grid_row[sel], grid.grid_col[sel]] - 1 + nxt
        nxt += n - 1
    return out


def read_lab_tiles(sources: Sequence[LabelSource], classifier: OnnxClassifier, params: AnalysisParams,
                   settings: AdaptSettings = DEFAULT_SETTINGS, cancel: CancelToken | None = None,
                   ) -> Iterator[AdaptProgress | LabTiles]:
    """Yield progress while reading every labelled tile and running the base model; the LabTiles last.

    Tiles are those ``analyze`` classifies (``plan_tiles``, stain transform, reader threads). A file
    that cannot be opened or read, or holds no labelled tissue tile, is listed in ``unreadable``.
    """
    spec = classifier.spec
    if "features" not in classifier.output_names:
        raise ModelError(f"{spec.onnx_path.name} has no 'features' output to adapt on; "
                         "`cellview domain upgrade` adds it to a GAP + linear model.")
    targets = label_targets([lab for s in sources for lab in source_labels(s)], spec)
    cancel = cancel or CancelToken()
    rng = np.random.default_rng(settings.seed)
    files: list[str] = []
    items: list[LabItem] = []
    feats, logits, allowed, item_of = [], [], [], []
    unreadable: list[tuple[str, str]] = []
    notes: list[str] = []
    for n_file, source in enumerate(sources):
        if cancel.cancelled:
            return
        yield AdaptProgress("reading", n_file, len(sources), f"reading {source.name}")
        slide = None
        readers = None
        first_item = len(items)
        try:
            slide = open_slide(source.path, mpp_um=source.mpp_um or params.mpp_um)
            run_params, _ = apply_reading(slide, spec, params)  # a smear model's image without a pixel size
            if not run_params.whole_image:
                slide.require_mpp()
            _, grid = plan_tiles(slide, spec, run_params)
            if source.label is not None:
                labels = np.full(grid.n_tiles, source.label, dtype=object)
            else:
                labels = tile_labels(grid, source.regions)
            labelled = np.array([v is not None for v in labels], bool)
            if not labelled.any():
                unreadable.append((str(source.path), "no labelled tissue tile (no tissue under the labels, or "
                                                     "labels outside the slide)"))
                continue
            comp = (np.where(labelled, 0, -1) if source.label is not None
                    else _components(grid, labelled, np.array([str(v) for v in labels], dtype=object)))
            chosen = np.flatnonzero(labelled)
            if len(chosen) > settings.max_tiles_per_file:
                chosen = np.sort(rng.choice(chosen, settings.max_tiles_per_file, replace=False))
                notes.append(f"{source.name}: {labelled.sum()} labelled tiles; a random {len(chosen)} were used")
            stain = slide_stain_transform(slide, grid, spec, params.stain_normalize)
            file_index = len(files)
            item_for_comp = {}
            for c in np.unique(comp[chosen]):
                tiles_c = chosen[comp[chosen] == c]
                target = targets[str(labels[tiles_c[0]])]
                item_for_comp[int(c)] = len(items)
                items.append(LabItem(file_index, target.label, target.category, int(len(tiles_c))))
            batches = batch_indices(len(chosen), params.batch_size)
            readers = TileReaders(slide, grid, [chosen[b] for b in batches], params.workers, stain=stain)
            got_f, got_l, got_i, got_a = [], [], [], []
            failed = 0
            for _ in batches:
                if cancel.cancelled:
                    return
                batch = readers.queue.get()
                if isinstance(batch, BaseException):
                    raise batch if isinstance(batch, CellviewError) else SlideError("Reading tiles failed.", repr(batch))
                ok = ~batch.failed
                failed += int(batch.failed.sum())
                if ok.any():
                    lg, ft = classifier.run(batch.tiles[ok], (classifier.output_name, "features"))
                    idx = batch.indices[ok]
                    got_f.append(np.asarray(ft, np.float32))
                    got_l.append(np.asarray(lg, np.float32))
                    got_i.append(np.array([item_for_comp[int(comp[i])] for i in idx], np.int64))
                    got_a.append(np.array([targets[str(labels[i])].allowed for i in idx], bool))
            if failed:
                notes.append(f"{source.name}: {failed} tiles could not be read and were left out")
            if not got_f:
                del items[first_item:]
                unreadable.append((str(source.path), "none of its labelled tiles could be read"))
                continue
            files.append(str(source.path))
            feats += got_f
            logits += got_l
            item_of += got_i
            allowed += got_a
        except CellviewError as exc:
            del items[first_item:]  # a file that failed half-way gives no item
            unreadable.append((str(source.path), exc.message))
        finally:
            if readers is not None:
                readers.close()
            if slide is not None:
                slide.close()
    yield AdaptProgress("reading", len(sources), len(sources), "read")
    if not feats:
        raise AdaptError("No labelled tile could be read: "
                         + "; ".join(f"{Path(f).name}: {why}" for f, why in unreadable))
    yield LabTiles(tuple(files), tuple(items), np.concatenate(feats), np.concatenate(logits),
                   np.concatenate(allowed), np.concatenate(item_of), tuple(unreadable), tuple(notes))


# ----------------------------------------------------------------------------- before vs after


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


# ----------------------------------------------------------------------------- the whole run


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


def adapt(sources: Sequence[LabelSource], base: ModelSpec, out_dir: Path | None, params: AnalysisParams,
          name: str | None = None, force: bool = False, settings: AdaptSettings = DEFAULT_SETTINGS,
          cancel: CancelToken | None = None, command: str = "",
          classifier: OnnxClassifier | None = None) -> Iterator[AdaptProgress | AdaptReport]:
    """The whole adaptation: read, cross-validate, fit on everything, write (when better, or forced).

    Yields AdaptProgress, then one AdaptReport. Raises LabelError / AdaptError / ModelError for input
    that cannot be adapted on; the message says what to change. ``out_dir`` None: measure only.
    """
    import time

    t0 = time.perf_counter()
    cancel = cancel or CancelToken()
    if base.precision != "fp32":  # the head is fitted on, and written into, the trained weights
        fp32 = precision_copy(base, "fp32")
        if fp32 is None:
            raise AdaptError(f"{base.onnx_path.name} is the model's {base.precision} copy and its FP32 model.onnx is "
                             "not beside it; adapt the FP32 model.")
        base = fp32
    if base.activation != "softmax":
        raise AdaptError(f"The model {base.name} uses a {base.activation} output; adapt refits softmax heads only.")
    if out_dir is not None:
        _check_out_dir(Path(out_dir), base)
    if not sources:
        raise LabelError("No labels given: name images or slides with their labels (image,label), or slides' "
                         "annotations.")
    for source in sources:  # fail before reading, naming where an unknown label is
        try:
            label_targets(source_labels(source), base)
        except LabelError as exc:
            raise LabelError(f"{exc.message} It is in {source.origin or source.name}.") from None
    head = _base_head(base)
    classifier = classifier or OnnxClassifier(base, device=params.device, max_batch=params.batch_size, precision="fp32")
    lab = None
    for item in read_lab_tiles(sources, classifier, params, settings, cancel):
        if isinstance(item, LabTiles):
            lab = item
        else:
            yield item
    if lab is None:
        return
    if len({it.category for it in lab.items}) < 2:
        only = lab.items[0].category
        raise AdaptError(f"Only {only} tissue is labelled. Label at least two categories (for example {only} and "
                         "what it is confused with): with one, the head would learn to call everything "
                         f"{only}, and the before / after could not show it.")
    cv: dict[str, Any] | None = None
    for item in cross_validate(lab, base, *head, settings, cancel):
        if isinstance(item, dict):
            cv = item
        else:
            yield item
    if cv is None:
        return
    warnings = label_warnings(lab, base)
    improved = better(cv["after"], cv["before"])
    report = AdaptReport(base, lab, cv["before"], cv["after"], cv["how"], cv["folds"], tuple(warnings), improved,
                         seconds=time.perf_counter() - t0)
    if out_dir is None or cancel.cancelled:
        yield report
        return
    if not improved and not force:
        raise AdaptError(
            "The adapted model is not better than the base model on your labels, so it was not written "
            f"(balanced accuracy of the labelled images / regions {report.before.items_balanced_accuracy:.2f} → "
            f"{report.after.items_balanced_accuracy:.2f}, of their tiles {report.before.tiles_balanced_accuracy:.2f} → "
            f"{report.after.tiles_balanced_accuracy:.2f}; {report.cv_how}). Label more images or regions, "
            "especially where the model is wrong, or write it anyway (cellview adapt --force).")
    yield AdaptProgress("fitting", cv["folds"], cv["folds"] + 1, "fitting on every label")
    weight, bias = fit_head(lab.features, lab.allowed, label_weights(lab.category, lab.item), *head, settings)
    yield AdaptProgress("writing", 0, 1, f"writing {out_dir}")
    written, sidecar = write_adapted(Path(out_dir), base, lab, weight, bias, report, params, settings, name, command)
    yield AdaptProgress("writing", 1, 1, "written")
    yield replace(report, written=written, sidecar=sidecar, seconds=time.perf_counter() - t0)


def _base_head(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    import onnx

    from cellview.analysis.onnx_graph import find_linear_head

    try:
        head = find_linear_head(onnx.load(str(spec.onnx_path)))
    except ModelError as exc:
        raise AdaptError(f"The model {spec.name} cannot be adapted: {exc.message}") from exc
    return head.weight, head.bias


def _check_out_dir(out_dir: Path, base: ModelSpec) -> None:
    """Never write over the base model, nor over a folder that holds another, non-adapted model."""
    if out_dir.resolve() == base.onnx_path.parent.resolve():
        raise AdaptError(f"{out_dir} is the base model's own folder; its files are never modified. Choose another "
                         "--out.")
    sidecar = out_dir / "model.json"
    if sidecar.exists():
        try:
            adapted = "adaptation" in json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            adapted = False
        if not adapted:
            raise AdaptError(f"{out_dir} already holds a model that was not made by cellview adapt; choose an empty "
                             "or new --out folder.")


# ----------------------------------------------------------------------------- writing the model folder


def write_adapted(out_dir: Path, base: ModelSpec, lab: LabTiles, weight: np.ndarray, bias: np.ndarray,
                  report: AdaptReport, params: AnalysisParams, settings: AdaptSettings, name: str | None,
                  command: str) -> tuple[Path, dict[str, Any]]:
    """The model folder: ONNX (+ FP16) with the new head, sidecars, domain statistics, report and card.

    Built beside ``out_dir`` and moved into place once whole, so a crash leaves either the previous
    folder or the new one, never a model without its statistics. The domain file and its sidecar
    entries are written as ``cellview domain fit`` writes them (``train.domain.write_domain``).
    """
    import shutil

    import onnx

    from cellview.analysis.domain import with_lab
    from cellview.analysis.domain_store import write_domain
    from cellview.analysis.onnx_graph import replace_linear_head

    today = _dt.date.today().isoformat()
    name = name or f"{base.name}-adapted"
    stage = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        onnx_path = stage / "model.onnx"
        atomic_write_bytes(onnx_path, replace_linear_head(onnx.load(str(base.onnx_path)), weight,
                                                          bias).SerializeToString())
        side = json.loads(base.sidecar_path.read_text(encoding="utf-8"))
        side.pop("domain", None)
        provenance = _provenance(base, lab, report, params, settings, today, command)
        side.update({
            "name": name,
            "version": f"{base.version}+lab.{today}" if base.version else f"lab.{today}",
            "description": f"{base.description or base.name}; head adapted to a lab's labels ({today})",
            "onnx_sha256": sha256_file(onnx_path),
            "training_data": f"{base.training_data} + a lab's {len(lab.files)} labelled images / slides "
                             f"({len(lab.features)} tiles); see MODEL_CARD.md",
            "metrics": {"adaptation": provenance["cross_validation"],
                        "base_model": {k: v for k, v in base.metrics.items() if k in ("loso", "cv", "image_rule")}},
            "adaptation": provenance,
        })
        atomic_write_text(stage / "model.json", json.dumps(side, indent=2) + "\n")
        fp16 = base.onnx_path.with_name("model.fp16.onnx")
        if fp16.exists() and sidecar_for(fp16).exists():
            path16 = stage / "model.fp16.onnx"
            atomic_write_bytes(path16, replace_linear_head(onnx.load(str(fp16)), weight, bias).SerializeToString())
            side16 = {**side, "name": f"{name}-fp16", "onnx_sha256": sha256_file(path16), "precision": "fp16"}
            atomic_write_text(sidecar_for(path16), json.dumps(side16, indent=2) + "\n")
        if base.domain is not None:
            stats = with_lab(base.domain, lab.features, [str(v) for v in lab.label], lab.file,
                             info={"date": today, "base_domain_sha256": base.domain_sha256})
            phrase = f"{base.domain.training_data} and this lab's labelled tissue"
            write_domain(onnx_path, replace(stats, info={**stats.info, "training_data": phrase}))
            side = json.loads((stage / "model.json").read_text(encoding="utf-8"))
        atomic_write_text(stage / ADAPTATION_FILE, json.dumps(_report_json(report, lab, base), indent=2) + "\n")
        atomic_write_text(stage / "MODEL_CARD.md", model_card(side, report, base))
        ModelSpec.load(onnx_path)  # what we write must validate
        old = out_dir.parent / f".{out_dir.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            out_dir.rename(old)
        stage.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out_dir / "model.onnx", side


def _provenance(base: ModelSpec, lab: LabTiles, report: AdaptReport, params: AnalysisParams,
                settings: AdaptSettings, today: str, command: str) -> dict[str, Any]:
    """The sidecar's ``adaptation`` entry: where the model came from, on what labels, measured how."""
    tiles_per_file = np.bincount(lab.file, minlength=len(lab.files))
    return {
        "date": today,
        "base": {"name": base.name, "version": base.version, "onnx_sha256": base.onnx_sha256,
                 "domain_sha256": base.domain_sha256 or None, "path": str(base.onnx_path)},
        "label_counts": _label_counts(lab),
        "files": [{"path": f, "items": sum(it.file == i for it in lab.items), "tiles": int(tiles_per_file[i])}
                  for i, f in enumerate(lab.files)],
        "unreadable": [{"path": f, "reason": why} for f, why in lab.unreadable],
        "tiles": int(len(lab.features)),
        "analysis": {"mpp_um": params.mpp_um, "tissue_threshold": params.tissue_threshold,
                     "tissue_method": params.tissue.method, "stain_normalize": params.stain_normalize},
        "method": {"head": "linear softmax regression on the base model's pooled features, L2 pull towards the "
                           "base head; labels weighted per category, then per image or region",
                   **{k: getattr(settings, k) for k in ("l2_to_base", "iterations", "learning_rate", "seed")}},
        "cross_validation": {"how": report.cv_how, "folds": report.cv_folds, "rule": "confidence-weighted vote of "
                             "the tiles' categories per image or region", "before": report.before.as_dict(),
                             "after": report.after.as_dict(), "improved": report.improved},
        "warnings": list(report.warnings),
        "cellview": __version__,
        "command": command,
    }


def _label_counts(lab: LabTiles) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    tiles_per_item = np.bincount(lab.item, minlength=len(lab.items))
    for i, it in enumerate(lab.items):
        entry = out.setdefault(it.label, {"items": 0, "tiles": 0, "files": 0})
        entry["items"] += 1
        entry["tiles"] += int(tiles_per_item[i])
    for label, entry in out.items():
        entry["files"] = len({it.file for it in lab.items if it.label == label})
    return out


def _report_json(report: AdaptReport, lab: LabTiles, base: ModelSpec) -> dict[str, Any]:
    """Per labelled image or region: its file, label, tiles and the call before and after (out of fold)."""
    return {
        "summary": report.summary(),
        "cross_validation": {"how": report.cv_how, "folds": report.cv_folds, "before": report.before.as_dict(),
                             "after": report.after.as_dict(), "improved": report.improved},
        "items": [{"file": lab.files[it.file], "label": it.label, "category": it.category, "tiles": it.n_tiles}
                  for it in lab.items],
        "warnings": list(report.warnings),
        "unreadable": [{"path": f, "reason": why} for f, why in lab.unreadable],
        "notes": list(lab.notes),
        "seconds": round(report.seconds, 1),
        "base_model": base.name,
    }


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def model_card(side: dict[str, Any], report: AdaptReport, base: ModelSpec) -> str:
    """The adapted model's card: before vs after on the lab's own labels first, then what it is and is not."""
    b, a = report.before, report.after
    prov = side["adaptation"]
    rows = [("Labelled images / regions (vote of their tiles)", b.items_balanced_accuracy, a.items_balanced_accuracy,
             b.items_recall, a.items_recall),
            ("Their tiles, one by one", b.tiles_balanced_accuracy, a.tiles_balanced_accuracy, b.tiles_recall,
             a.tiles_recall)]
    table = ["| on your labels, cross-validated | balanced accuracy before → after | recall malignant | recall benign "
             "| recall normal |", "|---|---|---|---|---|"]
    for title, vb, va, rb, ra in rows:
        table.append(f"| {title} | **{vb:.2f} → {va:.2f}** | " + " | ".join(
            f"{_pct(rb[c])} → {_pct(ra[c])}" for c in CATEGORIES) + " |")
    counts = "; ".join(f"{label}: {c['items']} images / regions in {c['files']} files, {c['tiles']} tiles"
                       for label, c in prov["label_counts"].items())
    loso = base.metrics.get("loso", {})
    base_line = ""
    if loso:
        base_line = ("The base model's own figures (leave-one-source-out, category balanced accuracy): "
                     + ", ".join(f"{k} {v['category_balanced_accuracy']:.2f}" for k, v in loso.items()
                                 if isinstance(v, dict) and "category_balanced_accuracy" in v and k != "all") + ".")
    verdict = ("better than the base model" if report.improved else
               "**not better** than the base model (written only because --force was given)")
    parts = [
        f"# {side['name']} — {base.name} {base.version} adapted to a lab's labels".replace("  ", " "),
        "",
        "**Not for clinical use.** Research model; it has not been validated for diagnosis.",
        "",
        "## Before vs after, on this lab's own labels",
        "",
        f"On the labels it was adapted on, scored **out of fold** ({report.cv_how}): each image or slide was "
        "called by a head fitted without it, so no tile was scored by a head that saw it. The adapted model is "
        f"{verdict}.",
        "",
        *table,
        "",
        "Rows are true categories' recall; balanced accuracy is their mean over the labelled categories. "
        "Images and regions are called by the confidence-weighted vote of their tiles' categories.",
        "",
        "### What these numbers mean, and what they do not",
        "- They say how well each model reproduces *these* labels on images or slides of this lab it did not "
        "see. They are not a validation on new patients of another lab, nor a clinical accuracy.",
        f"- They rest on {len(report.lab.items)} labelled images or regions: one call more or less moves the "
        "balanced accuracy by a lot. More labels, from more slides, give firmer figures and a better head.",
        "- Tissue nobody labelled keeps the base model's behaviour only approximately: the head is pulled towards "
        "the base head, not frozen. Check a few slides of each kind before relying on it.",
        "",
        "## Labels",
        f"- {counts}.",
        f"- {len(report.lab.files)} images / slides, {len(report.lab.features)} tiles; listed with their counts in "
        "`model.json` (`adaptation.files`) and per image / region with both calls in `adaptation.json`.",
        *[f"- Could not be used: {Path(f).name}: {why}" for f, why in report.lab.unreadable],
        *[f"- Note: {n}" for n in report.lab.notes],
        *[f"- **Warning**: {w}" for w in report.warnings],
        "",
        "## What changed",
        f"- Base model: {base.name} {base.version} (`{base.onnx_path.name}` sha256 `{base.onnx_sha256[:16]}…`); its "
        "files were not modified.",
        "- Only the linear head (and the activation maps' copy of it) was refitted, on the base model's pooled "
        "features of the labelled tiles: weighted softmax regression with an L2 pull towards the base head "
        f"(λ = {prov['method']['l2_to_base']}, {prov['method']['iterations']} full-batch Adam steps). The network "
        "before the features is byte-identical, so `features`, `feature_map` and `cam` are the base model's.",
        f"- Tiles were cut as `cellview analyze` cuts them at {base.spacing_um_px} µm/px"
        + (f" from slides read at {prov['analysis']['mpp_um']} µm/px" if prov["analysis"]["mpp_um"] else "")
        + f", stain normalisation {prov['analysis']['stain_normalize']}"
        + (" — analyse with the same `--stain-normalize` option" if prov["analysis"]["stain_normalize"] != "none"
           else "") + ".",
        "- Out of domain: the base statistics plus the lab's labelled tissue (one mean per label, calibrated on the "
        "lab's tiles scored out of file), so tissue like the lab's scores in domain; glass, blur and ink checks "
        "are unchanged." if base.domain is not None else "- The base model has no domain statistics; neither has this one.",
        f"- Temperature {base.temperature:.3f} and classes are the base model's.",
        "- No INT8 copy: an INT8 copy must be validated against its own FP32 model before it is used, so "
        "`--precision auto` runs these FP32 weights on a CPU"
        + (" (the FP16 copy, with the same new head, on a GPU)." if base.onnx_path.with_name("model.fp16.onnx").exists() else "."),
        "",
        "## Limits",
        "- Made from one lab's labels: it fits that lab's staining and scanner; on other labs' slides it may be "
        "worse than the base model.",
        "- The labels are the ground truth here; errors in them are learnt.",
        f"- {base_line}" if base_line else "- The base model's card gives its own figures.",
        "- Not for clinical use.",
        "",
        "## Reproduce",
        "```",
        prov.get("command") or "(command not recorded)",
        "```",
        "",
    ]
    return "\n".join(parts)


def default_command(argv: Sequence[str] | None = None) -> str:
    """The command line as typed (for the card's Reproduce section)."""
    import shlex

    return " ".join(shlex.quote(a) for a in ["cellview", *(sys.argv[1:] if argv is None else argv)])

