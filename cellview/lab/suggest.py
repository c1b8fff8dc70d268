"""What to label next (``cellview suggest``): the images, or the tiles of slides, whose labels would teach the
head most.

Few labels teach most when they cover the lab's tissue, not when they pile up where the model hesitates
(with a dozen labels, picking by uncertainty alone picks near-duplicates and misses whole kinds of
tissue). So the choice is diversity first, weighted by doubt: the candidates' pooled features (the
base model's ``features``, the same the head is refitted on) are grouped into N clusters by k-means,
each candidate weighing more the less sure the base model is of its category; from each cluster the
candidate nearest its centre (the most typical one) is suggested, ties going to the less certain one.
The N suggestions are ranked by how much of the lab's tissue their cluster stands for, times its
doubt: label from the top. Deterministic for a given seed; NumPy only.

``suggest`` runs the base model over the lab's images and slides (cut as ``cellview analyze`` cuts
them) and returns ``Suggestion`` rows; ``write_suggestions`` writes them as the ``image,label`` CSV that
``cellview adapt --labels`` reads, with an empty label to fill in (and, for a slide's tile, its
level-0 rectangle ``x,y,width,height``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellview.analysis.classifier import OnnxClassifier, probabilities
from cellview.analysis.model_spec import CATEGORIES
from cellview.analysis.pipeline import (
    CancelToken,
)
from cellview.analysis.results import AnalysisParams, category_probabilities
from cellview.base.errors import CellviewError, ModelError
from cellview.base.files import atomic_write_text
from cellview.lab.labels import cell_rect
from cellview.lab.labtiles import AdaptProgress, classify_tiles, plan_for_model
from cellview.slides.image_slide import ImageSlide
from cellview.slides.opening import open_slide

MAX_TILES_PER_SLIDE = 2000
"""Tiles of one slide considered (a random sample beyond this)."""
RESTARTS = 8


# ----------------------------------------------------------------------------- the choice


def uncertainty(category_probs: np.ndarray) -> np.ndarray:
    """Normalised entropy of each row's category probabilities: 0 sure, 1 no idea."""
    p = np.clip(np.asarray(category_probs, np.float64), 1e-12, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    k = p.shape[1]
    return (-(p * np.log(p)).sum(axis=1) / np.log(k)) if k > 1 else np.zeros(len(p))


def _project(features: np.ndarray, dims: int = 32) -> np.ndarray:
    """Centred features on their first ``dims`` principal directions (k-means in a space it can handle)."""
    x = np.asarray(features, np.float64)
    x = x - x.mean(axis=0)
    if min(x.shape) <= 1:
        return x
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dims].T


def _kmeans(x: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator,
            iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Weighted k-means with k-means++ seeding: (centres, cluster of each point)."""
    n = len(x)
    centres = [x[rng.choice(n, p=weights / weights.sum())]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        p = d2 * weights
        if p.sum() <= 0:
            break
        centres.append(x[rng.choice(n, p=p / p.sum())])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(axis=1))
    c = np.array(centres)
    assign = np.zeros(n, np.int64)
    for it in range(iterations):
        dist = (x * x).sum(axis=1)[:, None] - 2.0 * x @ c.T + (c * c).sum(axis=1)[None, :]  # M × k, no M × k × D
        new = dist.argmin(axis=1)
        if it and (new == assign).all():
            break
        assign = new
        for j in range(len(c)):
            m = assign == j
            if m.any():
                c[j] = (x[m] * weights[m, None]).sum(axis=0) / weights[m].sum()
    return c, assign


def rank_for_labelling(features: np.ndarray, category_probs: np.ndarray | None, n: int, seed: int = 0,
                       doubt_weight: float = 1.0) -> np.ndarray:
    """Indices of the ``n`` candidates to label, best first (module docstring).

    ``features``: (M, D) one row per candidate (an image's mean tile features, or a tile's);
    ``category_probs``: (M, C) the base model's category probabilities, or None (diversity alone).
    """
    x = np.asarray(features, np.float64)
    m = len(x)
    if n >= m:
        order = np.argsort(-uncertainty(category_probs)) if category_probs is not None else np.arange(m)
        return order.astype(np.int64)
    if n <= 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    doubt = uncertainty(category_probs) if category_probs is not None else np.zeros(m)
    weights = 1.0 + doubt_weight * doubt
    z = _project(x)
    best = None
    for _ in range(RESTARTS):  # k-means++ can miss a small, distinct kind of tissue: keep the tightest of several
        centres, assign = _kmeans(z, weights, n, rng)
        inertia = float((weights * ((z - centres[assign]) ** 2).sum(axis=1)).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centres, assign)
    _, centres, assign = best
    picks, worth = [], []
    for j in range(len(centres)):
        members = np.flatnonzero(assign == j)
        if not len(members):
            continue
        dist = np.sqrt(((z[members] - centres[j]) ** 2).sum(axis=1))
        scale = float(np.median(dist)) or 1.0
        best = members[np.lexsort((-doubt[members], np.round(dist / scale, 1)))[0]]
        picks.append(int(best))
        worth.append(float(weights[members].sum()))
    chosen = [p for _, p in sorted(zip(worth, picks), key=lambda t: -t[0])]
    if len(chosen) < n:  # empty clusters: fill with the most doubtful of the rest
        rest = np.setdiff1d(np.arange(m), chosen)
        chosen += rest[np.argsort(-doubt[rest])][: n - len(chosen)].tolist()
    return np.array(chosen[:n], np.int64)


# ----------------------------------------------------------------------------- the lab's images and slides


@dataclass(frozen=True)
class Suggestion:
    """One thing to label: an image, or one tile's cell of a slide (level-0 rectangle)."""

    rank: int
    image: Path
    rect: tuple[float, float, float, float] | None  # x, y, width, height (level 0); None: the whole image
    call: str  # the base model's category for it
    confidence: float
    doubt: float  # 0 sure … 1 no idea (normalised entropy of its category probabilities)


@dataclass(frozen=True)
class SuggestResult:
    suggestions: tuple[Suggestion, ...]
    candidates: int  # images and slide tiles considered
    unreadable: tuple[tuple[str, str], ...] = ()


def suggest(paths: Sequence[Path], classifier: OnnxClassifier, params: AnalysisParams, n: int,
            seed: int = 0, cancel: CancelToken | None = None,
            image_tiles: bool = False) -> Iterator[AdaptProgress | SuggestResult]:
    """Yield progress while the base model reads every image and slide; the SuggestResult last.

    A plain image is one candidate (its tiles' mean features and mean probabilities); a slide's
    tissue tiles are candidates one by one (up to ``MAX_TILES_PER_SLIDE`` of them). ``image_tiles``:
    an image's tiles are candidates one by one too (the viewer suggests tiles of the one open image).
    """
    spec = classifier.spec
    if "features" not in classifier.output_names:
        raise ModelError(f"{spec.onnx_path.name} has no 'features' output to choose by; "
                         "`cellview domain upgrade` adds it to a GAP + linear model.")
    cancel = cancel or CancelToken()
    rng = np.random.default_rng(seed)
    feats: list[np.ndarray] = []
    cat_probs: list[np.ndarray] = []
    where: list[tuple[Path, tuple[float, float, float, float] | None]] = []
    unreadable: list[tuple[str, str]] = []
    for n_file, path in enumerate(paths):
        if cancel.cancelled:
            return
        yield AdaptProgress("reading", n_file, len(paths), f"reading {Path(path).name}")
        slide = None
        try:
            slide = open_slide(path, mpp_um=params.mpp_um)
            _, grid = plan_for_model(slide, spec, params)
            tissue = np.flatnonzero(grid.tissue_fraction >= params.tissue_threshold) if grid.n_tiles else []
            chosen = np.asarray(tissue, np.int64)
            if not len(chosen):
                unreadable.append((str(path), "no tissue tile"))
                continue
            if len(chosen) > MAX_TILES_PER_SLIDE:
                chosen = np.sort(rng.choice(chosen, MAX_TILES_PER_SLIDE, replace=False))
            got = classify_tiles(slide, grid, chosen, spec, classifier, params, cancel)
            if got is None:
                return
            if not len(got.indices):
                unreadable.append((str(path), "no tile could be read"))
                continue
            probs = probabilities(got.logits, spec.activation, spec.temperature)
            f, idx = got.features, got.indices
            p = category_probabilities(probs, tuple(spec.class_categories), spec.activation)
            if isinstance(slide, ImageSlide) and not image_tiles:  # an image is labelled whole: one candidate
                feats.append(f.mean(axis=0, keepdims=True))
                cat_probs.append(p.mean(axis=0, keepdims=True))
                where.append((Path(path), None))
            else:
                feats.append(f)
                cat_probs.append(p)
                for i in idx:
                    x0, y0, x1, y1 = cell_rect(grid, int(i))
                    where.append((Path(path), (x0, y0, x1 - x0, y1 - y0)))
        except CellviewError as exc:
            unreadable.append((str(path), exc.message))
        finally:
            if slide is not None:
                slide.close()
    yield AdaptProgress("reading", len(paths), len(paths), "read")
    if not feats:
        raise CellviewError("Nothing to suggest: no image or slide could be read"
                            + (": " + "; ".join(f"{Path(f).name}: {why}" for f, why in unreadable) if unreadable
                               else "."))
    x, p = np.concatenate(feats), np.concatenate(cat_probs)
    order = rank_for_labelling(x, p, n, seed)
    doubt = uncertainty(p)
    present = [c for c in CATEGORIES if c in spec.class_categories]
    out = []
    for rank, i in enumerate(order, start=1):
        k = int(p[i].argmax())
        out.append(Suggestion(rank, where[i][0], where[i][1], present[k] if k < len(present) else CATEGORIES[k],
                              float(p[i].max()), float(doubt[i])))
    yield SuggestResult(tuple(out), len(x), tuple(unreadable))


def suggestions_csv(suggestions: Sequence[Suggestion], relative_to: Path | None = None) -> str:
    """``image,label`` (+ ``x,y,width,height`` when a slide's tile is suggested, + the base call for reference)."""
    regions = any(s.rect is not None for s in suggestions)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "label", *(["x", "y", "width", "height"] if regions else []), "rank", "model_call",
                "model_confidence"])
    for s in suggestions:
        name = _relative(s.image, relative_to)
        rect = [f"{v:.0f}" for v in s.rect] if s.rect is not None else ["", "", "", ""]
        w.writerow([name, "", *(rect if regions else []), s.rank, s.call, f"{s.confidence:.2f}"])
    return buf.getvalue()


def write_suggestions(path: Path, suggestions: Sequence[Suggestion]) -> Path:
    """The CSV beside which its paths are relative (``adapt --labels`` reads them relative to it)."""
    path = Path(path)
    atomic_write_text(path, suggestions_csv(suggestions, path.parent.absolute()))
    return path


def _relative(image: Path, folder: Path | None) -> str:
    if folder is None:
        return str(image)
    import os

    try:
        return os.path.relpath(Path(image).absolute(), folder)
    except ValueError:  # another drive
        return str(Path(image).absolute())
