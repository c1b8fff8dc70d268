"""*Suggest tiles to label* in the viewer, Qt-free: the lab's ``suggest`` on the open, analysed slide, then a tour.

``SuggestTour`` is composed with the labelling part (``LabelsModel``): ``job`` runs ``cellview.lab.suggest``
on the shown slide or image (cut exactly as its analysis was, so each suggestion is one of the shown grid's
tiles) as a viewer job; ``step(+1)`` / ``step(-1)`` go to the next / previous suggested tile and pick it, so
labelling it is one key (1–9). The suggestions belong to the grid they were made on: another slide or
another analysis drops them. Events: ``suggestions`` (this tour, when the tiles or the position changed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cellview.analysis.model_spec import ModelSpec
from cellview.analysis.pipeline import CancelToken
from cellview.analysis.results import plural
from cellview.base.errors import CellviewError
from cellview.lab.suggest import Suggestion, SuggestResult
from cellview.viewer.events import EmitterGroup
from cellview.viewer.jobs import Job
from cellview.viewer.labelling import LabelsModel

DEFAULT_N = 12
"""Tiles suggested at a time: about what one sitting labels, and what the adaptation curve used (15 images)."""


class SuggestTour:
    """The suggested tiles of the shown grid (``tiles``, best first) and where the tour is (``position``)."""

    EVENTS = ("suggestions",)

    def __init__(self, labels: LabelsModel) -> None:
        self.labels = labels
        self.events = EmitterGroup(*self.EVENTS)
        self.tiles: list[int] = []
        self.calls: list[str] = []  # the base model's category for each suggested tile
        self.position = -1
        self.note = ""
        self._grid_id: int | None = None
        labels.events.labels.connect(self._on_labels)

    def _on_labels(self, event: Any) -> None:
        grid = self.labels.grid
        if self.tiles and (grid is None or id(grid) != self._grid_id):
            self.clear()

    def clear(self) -> None:
        self.tiles, self.calls, self.position, self._grid_id = [], [], -1, None
        self.events.suggestions(self)

    @property
    def can_suggest(self) -> bool:
        return self.labels.grid is not None and self.labels.slide is not None

    def rects(self) -> list[tuple[int, int, int, int]]:
        """The suggested tiles' (x, y, w, h) level-0 rectangles (outlined on the slide)."""
        grid = self.labels.grid
        return [] if grid is None else [grid.rect(i) for i in self.tiles if 0 <= i < grid.n_tiles]

    def step(self, by: int = 1) -> int:
        """Go to the next (``by`` 1) or previous (-1) suggested tile, wrapping round; pick it. Returns its index
        (-1: no suggestion)."""
        if not self.tiles:
            return -1
        self.position = (self.position + by) % len(self.tiles) if self.position >= 0 else (0 if by > 0 else
                                                                                               len(self.tiles) - 1)
        index = self.tiles[self.position]
        self.labels.pick(index)
        self.events.suggestions(self)
        return index

    def where(self) -> str:
        """'Suggested tile 3 of 12 (the model says benign)', or '' off the tour."""
        if not 0 <= self.position < len(self.tiles):
            return ""
        return (f"Suggested tile {self.position + 1} of {len(self.tiles)} (the model says "
                f"{self.calls[self.position]}): press 1–9 to label it, N for the next")

    def _take(self, result: SuggestResult) -> None:
        """The core's suggestions as tiles of the shown grid (the same cut, so each rectangle's centre is a tile)."""
        grid = self.labels.grid
        tiles, calls = [], []
        for s in result.suggestions:
            index = _tile_of(grid, s)
            if index >= 0 and index not in tiles:
                tiles.append(index)
                calls.append(s.call)
        self.tiles, self.calls, self.position = tiles, calls, -1
        self._grid_id = None if grid is None else id(grid)
        labelled = self.labels.tile_labels()
        done = sum(1 for i in tiles if i < len(labelled) and labelled[i] is not None)
        self.note = (f"{plural(len(tiles), 'tile')} suggested to label, chosen from {result.candidates} for how much "
                     "of this slide's tissue each stands for and how unsure the model is: N steps through them"
                     + (f" ({done} labelled already)" if done else "") + ".")
        self.events.suggestions(self)

    def job(self, n: int = DEFAULT_N, on_item: Callable[[Any], None] = lambda _i: None,
            on_failed: Callable[[CellviewError], None] = lambda _e: None,
            on_done: Callable[[], None] = lambda: None) -> Job:
        """``cellview.lab.suggest`` on the shown slide for the viewer's runner: progress items, then the tour."""
        result = self.labels.analysis.shown_result()
        model_path = self.labels.settings.model_path
        slide = self.labels.slide

        def run(cancel: CancelToken) -> Iterator[Any]:
            from cellview.analysis.classifier import OnnxClassifier
            from cellview.lab.suggest import suggest

            if result is None or self.labels.grid is None or slide is None or not model_path:
                raise CellviewError("Analyse the slide first: tiles are suggested from the model's reading of it.")
            spec = ModelSpec.load(model_path)
            params = replace(result.params, mpp_um=result.mpp.um if result.mpp is not None else None)
            classifier = OnnxClassifier(spec, device=params.device, max_batch=params.batch_size, precision="fp32")
            yield from suggest([Path(slide)], classifier, params, n, cancel=cancel, image_tiles=True)

        grid_id = id(self.labels.grid)

        def item(value: Any) -> None:
            if isinstance(value, SuggestResult):
                if self.labels.slide == slide and id(self.labels.grid) == grid_id:
                    self._take(value)
                else:  # another slide or analysis meanwhile: these tiles are not its tiles
                    self.note = "The slide or its analysis changed while suggesting: suggest again."
            on_item(value)

        return Job("suggest", run, item, on_failed, on_done)


def _tile_of(grid: Any, s: Suggestion) -> int:
    if grid is None or s.rect is None:
        return -1
    x, y, w, h = s.rect
    return int(grid.tile_at(x + w / 2, y + h / 2))
