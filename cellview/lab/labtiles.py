"""Reading the lab's labelled tiles: cut exactly as ``cellview analyze`` cuts them (same spacing, tissue rule
and stain option), run through the base model once for its logits and pooled features (``read_lab_tiles``).

A labelled image is one item; on a slide, each connected patch of same-label tiles is one item: the
unit that gets a call in the before / after check.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import CATEGORIES
from cellview.analysis.pipeline import (
    CancelToken,
    TileReaders,
    apply_reading,
    batch_indices,
    plan_tiles,
    slide_stain_transform,
)
from cellview.analysis.results import AnalysisParams
from cellview.base.errors import CellviewError, ModelError, SlideError
from cellview.lab.head import DEFAULT_SETTINGS, AdaptSettings, label_targets, source_labels
from cellview.lab.labels import LabelSource, check_regions, region_problems, tile_labels
from cellview.slides.opening import open_slide


class AdaptError(CellviewError):
    """Adaptation cannot run, or its result is not written (the message says why, with the figures)."""


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
    position: np.ndarray | None = None  # (N, 2) grid row, column of each tile in its file (spatial blocks)
    unlabelled: tuple[tuple[str, str], ...] = ()  # (label, why its annotations on a slide labelled no tile)

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



def plan_for_model(slide: Any, spec: Any, params: AnalysisParams) -> tuple[AnalysisParams, Any]:
    """``slide``'s tiles as ``cellview analyze`` cuts them for this model: its reading rule for an image without a
    pixel size applied (a smear model), else the pixel size required; returns the run's params and the grid."""
    run_params, _ = apply_reading(slide, spec, params)
    if not run_params.whole_image:
        slide.require_mpp()
    _, grid = plan_tiles(slide, spec, run_params)
    return run_params, grid


@dataclass(frozen=True)
class TileOutputs:
    """The model's outputs for the tiles of one file that could be read, in tile order (``indices``)."""

    indices: np.ndarray
    logits: np.ndarray
    features: np.ndarray
    failed: int  # tiles that could not be read


def classify_tiles(slide: Any, grid: Any, chosen: np.ndarray, spec: Any, classifier: OnnxClassifier,
                   params: AnalysisParams, cancel: CancelToken) -> TileOutputs | None:
    """Read the ``chosen`` tiles (stain-normalised as analyze does) and run the model on them; None when cancelled.

    Batches arrive as the readers finish them, so the outputs are put back in tile order: the same labels and
    seed give the same head and the same suggestions.
    """
    stain = slide_stain_transform(slide, grid, spec, params.stain_normalize)
    batches = batch_indices(len(chosen), params.batch_size)
    readers = TileReaders(slide, grid, [chosen[b] for b in batches], params.workers, stain=stain)
    try:
        got_i, got_l, got_f, failed = [], [], [], 0
        for _ in batches:
            if cancel.cancelled:
                return None
            batch = readers.queue.get()
            if isinstance(batch, BaseException):
                raise batch if isinstance(batch, CellviewError) else SlideError("Reading tiles failed.", repr(batch))
            ok = ~batch.failed
            failed += int(batch.failed.sum())
            if ok.any():
                lg, ft = classifier.run(batch.tiles[ok], (classifier.output_name, "features"))
                got_l.append(np.asarray(lg, np.float32))
                got_f.append(np.asarray(ft, np.float32))
                got_i.append(np.asarray(batch.indices[ok], np.int64))
    finally:
        readers.close()
    if not got_i:
        return TileOutputs(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), failed)
    idx = np.concatenate(got_i)
    order = np.argsort(idx, kind="stable")
    return TileOutputs(idx[order], np.concatenate(got_l)[order], np.concatenate(got_f)[order], failed)


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
    feats, logits, allowed, item_of, position = [], [], [], [], []
    unreadable: list[tuple[str, str]] = []
    unlabelled: list[tuple[str, str]] = []
    notes: list[str] = []
    for n_file, source in enumerate(sources):
        if cancel.cancelled:
            return
        yield AdaptProgress("reading", n_file, len(sources), f"reading {source.name}")
        slide = None
        first_item = len(items)
        first_unlabelled = len(unlabelled)
        try:
            slide = open_slide(source.path, mpp_um=source.mpp_um or params.mpp_um)
            _, grid = plan_for_model(slide, spec, params)
            if source.label is not None:
                labels = np.full(grid.n_tiles, source.label, dtype=object)
            else:
                labels = tile_labels(grid, source.regions)
                mpp = slide.mpp.um if slide.mpp is not None else None
                for label, why in region_problems(check_regions(source.regions, grid), grid, mpp).items():
                    unlabelled.append((label, f"{source.name}: {why}"))
                    notes.append(f"{source.name}: {label} labels no tile: {why}")
            labelled = np.array([v is not None for v in labels], bool)
            if not labelled.any():
                whys = [why for _, why in unlabelled[first_unlabelled:]]
                unreadable.append((str(source.path), "no labelled tissue tile"
                                   + (": " + "; ".join(w.split(": ", 1)[1] for w in whys) if whys
                                      else " (no tissue under the labels)")))
                continue
            comp = (np.where(labelled, 0, -1) if source.label is not None
                    else _components(grid, labelled, np.array([str(v) for v in labels], dtype=object)))
            chosen = np.flatnonzero(labelled)
            if len(chosen) > settings.max_tiles_per_file:
                chosen = np.sort(rng.choice(chosen, settings.max_tiles_per_file, replace=False))
                notes.append(f"{source.name}: {labelled.sum()} labelled tiles; a random {len(chosen)} were used")
            file_index = len(files)
            item_for_comp = {}
            for c in np.unique(comp[chosen]):
                tiles_c = chosen[comp[chosen] == c]
                target = targets[str(labels[tiles_c[0]])]
                item_for_comp[int(c)] = len(items)
                items.append(LabItem(file_index, target.label, target.category, int(len(tiles_c))))
            got = classify_tiles(slide, grid, chosen, spec, classifier, params, cancel)
            if got is None:
                return
            idx, failed = got.indices, got.failed
            if failed:
                notes.append(f"{source.name}: {failed} tiles could not be read and were left out")
            if not len(idx):
                del items[first_item:]
                unreadable.append((str(source.path), "none of its labelled tiles could be read"))
                continue
            files.append(str(source.path))
            feats.append(got.features)
            logits.append(got.logits)
            item_of.append(np.array([item_for_comp[int(comp[i])] for i in idx], np.int64))
            position.append(np.stack([grid.grid_row[idx], grid.grid_col[idx]], axis=1).astype(np.int64))
            allowed.append(np.array([targets[str(labels[i])].allowed for i in idx], bool))
        except CellviewError as exc:
            del items[first_item:]  # a file that failed half-way gives no item
            unreadable.append((str(source.path), exc.message))
        finally:
            if slide is not None:
                slide.close()
    yield AdaptProgress("reading", len(sources), len(sources), "read")
    if not feats:
        raise AdaptError("No labelled tile could be read: "
                         + "; ".join(f"{Path(f).name}: {why}" for f, why in unreadable))
    yield LabTiles(tuple(files), tuple(items), np.concatenate(feats), np.concatenate(logits),
                   np.concatenate(allowed), np.concatenate(item_of), tuple(unreadable), tuple(notes),
                   np.concatenate(position), tuple(unlabelled))

