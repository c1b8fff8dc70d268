"""Labelling in the viewer, Qt-free: the open slide's labels, the tiles picked to label, and *Adapt model…*.

``LabelsModel`` is the viewer's labelling part (``ViewerModel(labelling=True).labels``; the kiosk has none)
and follows the open slide (a slide opens: its labels are read; it closes: they are dropped). The views
turn clicks and keys into ``pick`` / ``pick_rect`` / ``label_picked`` and draw ``outlines``; every change
is saved at once, atomically, as QuPath-compatible GeoJSON beside the slide (``labels.labels_path``) and
noted in the list of labelled slides, so *Adapt model…* (``adapt_job``: ``cellview.lab.adapt.adapt`` on
every slide labelled so far, as a viewer job) and the next session find them.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellview.analysis.model_lookup import user_models_dir
from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS, ModelSpec
from cellview.analysis.pipeline import CancelToken
from cellview.analysis.results import ModelInfo, plural
from cellview.analysis.tiling import TileGrid
from cellview.base.errors import CellviewError, ExportError
from cellview.lab.classmap import MappedRegions, apply_mapping, known_label, remembered_mapping, valid_labels
from cellview.lab.history import LabelHistory
from cellview.lab.labels import (
    IGNORE,
    LabelRegion,
    cell_centres,
    cell_rect,
    label_color,
    labelled_slides,
    labels_path,
    read_geojson,
    remember_labels,
    summarise_import,
    tile_labels,
    user_labels_dir,
    write_geojson,
)
from cellview.outputs.overlay import Contour, cell_outline
from cellview.viewer.analysis import AnalysisRun
from cellview.viewer.analysis_settings import AnalysisSettings
from cellview.viewer.events import EmitterGroup
from cellview.viewer.jobs import Job
from cellview.viewer.selection import Selection
from cellview.viewer.slide import SlideState

LABEL_KEYS = "123456789"
_LAB_SUFFIX = re.compile(r"(-lab-\d{4}-\d{2}-\d{2}(-\d+)?)+$")


@dataclass(frozen=True)
class LabelChoice:
    """A label the keys 1–9 and the menu offer: a category, then each class of the model."""

    key: str
    label: str
    category: str
    color: str

    @property
    def text(self) -> str:
        return self.label if self.label in CATEGORIES else f"{self.label} ({self.category})"


def label_choices(model: ModelInfo) -> list[LabelChoice]:
    """Categories the model has (malignant, benign, normal), then its classes; at most nine, one per key."""
    cats = [c for c in CATEGORIES if c in model.class_categories]
    out = [LabelChoice("", c, c, CATEGORY_COLORS[c]) for c in cats]
    out += [LabelChoice("", n, c, col) for n, c, col in zip(model.class_names, model.class_categories,
                                                            model.class_colors) if n not in cats]
    return [LabelChoice(k, c.label, c.category, c.color) for k, c in zip(LABEL_KEYS, out)]


class LabelsModel:
    """The open slide's labels as the viewer edits them, as ``model.labels`` (module docstring): ``slide`` is the
    labelled slide's path, ``regions`` its labels, ``picked`` the tiles picked to label. Events: ``labels``
    (this part, when the labels or their grid changed) and ``picked`` (the picked tiles)."""

    EVENTS = ("labels", "picked")

    def __init__(self, slide: SlideState, analysis: AnalysisRun, selection: Selection,
                 settings: AnalysisSettings) -> None:
        self.slide_state, self.analysis, self.selection, self.settings = slide, analysis, selection, settings
        self.events = EmitterGroup(*self.EVENTS)
        self.slide: str | None = None
        self.regions: list[LabelRegion] = []
        self.picked: set[int] = set()
        self.saved_to: Path | None = None
        self.note = ""
        self.history = LabelHistory()  # undo / redo of this slide's labels (Ctrl+Z)
        self.last_import: tuple[tuple[LabelRegion, ...], str, tuple[str, ...]] = ((), "", ())
        self._mapping: dict[str, str] = remembered_mapping()  # QuPath class → label (``lab.classmap``)
        self._grid_id: int | None = None
        self._cache: tuple[int, int, np.ndarray] | None = None  # (grid id, version, tile labels)
        self._version = 0
        slide.events.slide.connect(self._on_slide)
        analysis.events.result.connect(self._on_result)

    # -- the slide -------------------------------------------------------------------------------

    def _on_slide(self, event: Any) -> None:
        opened = event.value
        self.picked.clear()
        self.regions, self.saved_to, self.note = [], None, ""
        self.history.clear()
        self._mapping = remembered_mapping()
        self.slide = None if opened is None else str(opened.path)
        if self.slide is not None:
            path = labels_path(self.slide, writable=False)
            if path.is_file():
                try:
                    got = read_geojson(path)
                    self.regions, self.saved_to = list(got.regions), path
                    self.note = f"Labels read from {path.name}" + (
                        f" (passed over {'; '.join(got.skipped)})" if got.skipped else "")
                except CellviewError as exc:
                    self.note = f"The labels file {path.name} could not be read: {exc.message}"
        self._changed()
        self.events.picked(self.picked)

    def _on_result(self, event: Any) -> None:
        grid = self.grid
        if grid is None or id(grid) != self._grid_id:
            self._grid_id = None if grid is None else id(grid)
            if self.picked:
                self.picked.clear()
                self.events.picked(self.picked)
            self.events.labels(self)

    @property
    def grid(self) -> TileGrid | None:
        result = self.analysis.shown_result()
        return None if result is None or result.grid.whole_image else result.grid

    @property
    def choices(self) -> list[LabelChoice]:
        result = self.analysis.shown_result()
        return [] if result is None else label_choices(result.model)

    # -- picking tiles ---------------------------------------------------------------------------

    def pick(self, index: int, extend: bool = False) -> None:
        """Pick one tile (``extend``: add it to the picked ones, or take it out when it is there)."""
        grid = self.grid
        if grid is None or not 0 <= index < grid.n_tiles:
            if not extend:
                self.clear_picked()
            return
        if extend:
            self.picked ^= {index}
        else:
            self.picked = {index}
        self.events.picked(self.picked)

    def pick_at(self, l0_x: float, l0_y: float, extend: bool = False) -> int:
        grid = self.grid
        index = -1 if grid is None else grid.tile_at(l0_x, l0_y)
        self.pick(index, extend)
        return index

    def pick_rect(self, x0: float, y0: float, x1: float, y1: float, extend: bool = False) -> int:
        """Pick every tile whose grid cell's centre lies in the rectangle; returns how many are picked."""
        grid = self.grid
        if grid is None:
            return 0
        cx, cy = cell_centres(grid)
        lo_x, hi_x, lo_y, hi_y = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        hit = set(np.flatnonzero((cx >= lo_x) & (cx <= hi_x) & (cy >= lo_y) & (cy <= hi_y)).tolist())
        self.picked = (self.picked | hit) if extend else hit
        self.events.picked(self.picked)
        return len(self.picked)

    def clear_picked(self) -> None:
        if self.picked:
            self.picked = set()
            self.events.picked(self.picked)

    def targets(self) -> list[int]:
        """The tiles a label goes to: the picked ones, else the tile selected in the inspector."""
        grid = self.grid
        if grid is None:
            return []
        if self.picked:
            return sorted(self.picked)
        index = self.selection.index
        return [index] if 0 <= index < grid.n_tiles else []

    # -- labelling -------------------------------------------------------------------------------

    def label_key(self, key: str) -> int:
        """Keys 1–9: the choice with that key; 0: remove. Returns how many tiles were labelled."""
        if key == "0":
            return self.label_picked(None)
        choice = next((c for c in self.choices if c.key == key), None)
        return 0 if choice is None else self.label_picked(choice.label)

    def pick_all(self) -> int:
        """Pick every tissue tile of the shown grid (the whole image or slide, to label it with one key)."""
        grid = self.grid
        if grid is None:
            return 0
        self.picked = set(range(grid.n_tiles))
        self.events.picked(self.picked)
        return len(self.picked)

    def label_picked(self, label: str | None) -> int:
        """Give the target tiles ``label`` (None: take their label away). Saved at once; the pick is done with."""
        grid = self.grid
        tiles = self.targets()
        if grid is None or not tiles or self.slide is None:
            return 0
        rects = {tuple(round(v, 3) for v in cell_rect(grid, i)) for i in tiles}
        kept = [r for r in self.regions if _rect_of(r) not in rects]  # a tile's own earlier label goes
        added = [LabelRegion.rect(label, *rect) for rect in sorted(rects)] if label is not None else []
        regions = kept + added
        if label is None:  # still under an imported annotation: leave it out explicitly (QuPath's Ignore*)
            still = tile_labels(grid, apply_mapping(regions, self._valid(), self._mapping).regions)
            regions += [LabelRegion.rect(IGNORE, *cell_rect(grid, i)) for i in tiles if still[i] is not None]
        what = plural(len(tiles), "tile")
        self._set(regions, f"label {what} {label}" if label is not None else f"remove the label of {what}")
        self.clear_picked()
        return len(tiles)

    def import_geojson(self, path: str | os.PathLike[str]) -> str:
        """QuPath annotations of this slide become labels (after the ones there); returns what was done, in words
        (``import_text``: which tiles they label, or why none; classes not yet mapped are not labels)."""
        if self.slide is None:
            raise CellviewError("Open a slide before importing its annotations.")
        got = read_geojson(path)
        self.last_import = (tuple(got.regions), Path(path).name, tuple(got.skipped))
        self._set(self.regions + list(got.regions), f"import {Path(path).name}")
        self.note = self.import_text()
        self.events.labels(self)
        return self.note

    def import_text(self) -> str:
        """What the last import labels on the shown grid, with the mapping as it is now."""
        regions, name, skipped = self.last_import
        mapped = self.mapped(regions)
        grid = self.grid
        head = f"Imported {plural(len([r for r in regions if not r.is_ignore]), 'annotation')} from {name}"
        if grid is None:
            text = f"{head}; they label tiles once the image is analysed."
        elif mapped.regions:
            result = self.analysis.shown_result()
            mpp = result.mpp.um if result is not None and result.mpp is not None else None
            summary = summarise_import(mapped.regions, grid, mpp)  # words for the annotations that are labels
            own = f"Imported {plural(summary.regions, 'annotation')} from {name}"
            text = head + summary.text(name)[len(own):]
        else:
            text = f"{head}: no tile is labelled."
        if mapped.pending:
            text += (f" Not labels until mapped to a category or class of the model: {', '.join(mapped.pending)} "
                     "(Labels → Map QuPath classes…).")
        if mapped.left_out:
            text += f" Left out as mapped: {', '.join(mapped.left_out)}."
        if skipped:
            text += f" Passed over {'; '.join(skipped)}."
        return text

    # -- QuPath classes the model does not know (``lab.classmap``) ---------------------------------

    def _valid(self) -> list[str]:
        result = self.analysis.shown_result()
        return [] if result is None else valid_labels(result.model.class_names, result.model.class_categories)

    def mapped(self, regions: Any = None) -> MappedRegions:
        """``regions`` (default: the slide's) as labels of the shown model: mapped classes renamed, pending ones out."""
        return apply_mapping(self.regions if regions is None else regions, self._valid(), self._mapping)

    def foreign_classes(self, regions: Any = None) -> list[str]:
        """Classes among ``regions`` (default: the slide's) that are not labels of the model: the mapping dialog's
        rows (mapped before or not)."""
        valid = self._valid()
        out: list[str] = []
        for r in self.regions if regions is None else regions:
            if not r.is_ignore and known_label(r.label, valid) is None and r.label not in out:
                out.append(r.label)
        return out

    def mapping_for(self, qupath_class: str) -> str | None:
        """What ``qupath_class`` was mapped to before (proposed again), or None."""
        return self._mapping.get(qupath_class)

    def set_class_map(self, choices: dict[str, str | None]) -> None:
        """Map QuPath classes (``None``: forget) and remember it for the next import (``classmap``, which
        ``cellview adapt`` reads too)."""
        from cellview.lab.classmap import remember_mapping

        for cls, label in choices.items():
            self._mapping = remember_mapping(cls, label)
        self._changed()

    # -- undo ------------------------------------------------------------------------------------

    def _set(self, regions: list[LabelRegion], text: str) -> None:
        self.history.record(self.regions, regions, text)
        self.regions = regions
        self._save()

    def undo(self) -> str:
        """Undo the last change to this slide's labels (saved at once); returns what was undone, or ''."""
        text = self.history.undo_text()
        regions = self.history.undo()
        if regions is None or self.slide is None:
            return ""
        self.regions = list(regions)
        self._save()
        self.note = f"{text[0].upper()}{text[1:]}: done. Labels saved to {self.saved_to}"
        self.events.labels(self)
        return text

    def redo(self) -> str:
        text = self.history.redo_text()
        regions = self.history.redo()
        if regions is None or self.slide is None:
            return ""
        self.regions = list(regions)
        self._save()
        self.note = f"{text}: done. Labels saved to {self.saved_to}"
        self.events.labels(self)
        return text

    def tile_labels(self) -> np.ndarray:
        """The shown grid's tiles' labels (None: unlabelled), cached until the labels or the grid change; classes
        the model does not know count only once mapped."""
        grid = self.grid
        if grid is None:
            return np.zeros(0, dtype=object)
        if self._cache is None or self._cache[:2] != (id(grid), self._version):
            self._cache = (id(grid), self._version, tile_labels(grid, self.mapped().regions))
        return self._cache[2]

    def counts(self) -> dict[str, int]:
        """Labelled tiles per label on the shown grid."""
        labels = self.tile_labels()
        names, n = np.unique([str(v) for v in labels if v is not None], return_counts=True)
        return dict(zip(names.tolist(), n.tolist()))

    def outlines(self) -> list[Contour]:
        """One outline per label around its tiles' cells, in the label's colour (never the pick's cyan)."""
        grid = self.grid
        if grid is None or not self.regions:
            return []
        labels = self.tile_labels()
        result = self.analysis.shown_result()
        names = result.model.class_names if result is not None else ()
        colours = result.model.class_colors if result is not None else ()
        choice = {c.label: c.color for c in self.choices}
        out = []
        for name in sorted({str(v) for v in labels if v is not None}):
            cells = np.zeros(grid.shape, bool)
            mine = labels == name
            cells[grid.grid_row[mine], grid.grid_col[mine]] = True
            seg = cell_outline(grid, cells)
            if len(seg):
                colour = choice.get(name) or "#{:02x}{:02x}{:02x}".format(*label_color(name, names, colours))
                out.append(Contour(name, colour, seg))
        return out

    def _save(self) -> None:
        """Write the labels (beside the slide, else in the user's folder) and note the slide as labelled."""
        assert self.slide is not None
        info = self.slide_state.opened.info if self.slide_state.opened is not None else None
        mpp = info.mpp.um if info is not None and info.mpp is not None and info.mpp.source == "user" else None
        result = self.analysis.shown_result()
        names = result.model.class_names if result is not None else ()
        colours = result.model.class_colors if result is not None else ()
        slide_name = Path(self.slide).name
        path = labels_path(self.slide)
        try:
            write_geojson(path, self.regions, names, colours, slide_name)
        except ExportError:
            path = user_labels_dir() / path.name
            write_geojson(path, self.regions, names, colours, slide_name)
        self.saved_to = path
        labelled = any(not r.is_ignore for r in self.regions)
        remember_labels(self.slide, path if labelled else None, mpp)
        self.note = f"Labels saved to {path}"
        self._changed()

    def _changed(self) -> None:
        self._version += 1
        self.events.labels(self)

    # -- adapting --------------------------------------------------------------------------------

    @staticmethod
    def labelled_slides() -> list[Any]:
        return labelled_slides()

    def default_name(self, base: str) -> str:
        """'colon-he-lab-2026-12-07' ('…-2' when that model exists: adapting today's adapted model again proposed
        its own folder, which adapt refuses); an adapted model's own '-lab-DATE' is not stacked on."""
        stem = f"{_LAB_SUFFIX.sub('', base)}-lab-{_dt.date.today().isoformat()}"
        name, k = stem, 2
        while (user_models_dir() / name).exists():
            name, k = f"{stem}-{k}", k + 1
        return name

    def adapt_job(self, name: str, force: bool, on_item: Callable[[Any], None],
                  on_failed: Callable[[CellviewError], None], on_done: Callable[[], None],
                  out_dir: Path | None = None, base_path: str | None = None, writes: str = "better") -> Job:
        """*Adapt model…*: ``cellview.lab.adapt.adapt`` on every labelled slide, for the viewer's runner.

        The base is ``base_path`` (default: the selected model); tiles are cut with the viewer's current analysis
        settings, each slide at its own (or entered) µm/px; the model goes to the user's models folder.
        ``writes="not distinguishable"``: the person chose to keep a model not shown better (``force``: a worse one).
        """
        model_path = base_path or self.settings.model_path
        params = self.settings.current()
        folder = out_dir or user_models_dir() / name
        command = f"(the viewer's Adapt model…: {len(labelled_slides())} labelled slides)"

        def run(cancel: CancelToken) -> Iterator[Any]:
            from dataclasses import replace

            from cellview.lab.adapt import adapt

            if not model_path:
                raise CellviewError("Select the model to adapt first.")
            base = ModelSpec.load(model_path)
            sources = labelled_slides()
            if not sources:
                raise CellviewError("No slide is labelled yet: pick tiles and press 1–9 to label them.")
            yield from adapt(sources, base, folder, replace(params, mpp_um=None), name=name, force=force,
                             cancel=cancel, command=command, writes=writes)

        return Job("adapt", run, on_item, on_failed, on_done)


def _rect_of(region: LabelRegion) -> tuple[float, ...] | None:
    """The (x0, y0, x1, y1) of a region drawn tile by tile (one axis-aligned rectangle), else None."""
    if len(region.polygons) != 1 or len(region.polygons[0]) != 1 or len(region.polygons[0][0]) != 5:
        return None
    (a, b, c, d, _), = region.polygons[0]
    if not (a[1] == b[1] and b[0] == c[0] and c[1] == d[1] and d[0] == a[0]):
        return None
    return tuple(round(v, 3) for v in (a[0], a[1], c[0], c[1]))
