"""The slide view bound to the viewer model: what is on the canvas besides the heatmap (``painter``).

The open slide and its display tiles (read by loader workers, one slide handle each), the selected tile's
frame, the malignant regions, a smear model's stained cells, the pointer's tooltip and the arrow keys' steps. A click is the window's to
interpret (the desktop selects the tile, the kiosk also shows its call in a sheet): ``select_at`` is the
common part.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtWidgets import QToolTip

from cellview.analysis.morphology import Region
from cellview.gui.canvas.loaders import PatchLoaded, TileLoaded, TileRequests, tile_loader_task
from cellview.gui.canvas.view import ARROW_STEPS, SlideView
from cellview.gui.worker import QtRunner, Worker
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel
from cellview.viewer.slide import Opened

LOADER_THREADS = 2
MAX_REGIONS_DRAWN = 200


class CanvasController(QObject):
    """Renders the model's slide, selection and regions on a ``SlideView`` (``view``).

    ``slideShown`` fires once a new slide is on the canvas and its loaders run; ``patchLoaded`` carries the
    inspector's patches (read by the same loaders); ``message`` is a line for a status bar.
    """

    slideShown = Signal(object)  # Opened
    patchLoaded = Signal(object)  # PatchLoaded
    message = Signal(str, int)  # text, milliseconds

    def __init__(self, model: ViewerModel, runner: QtRunner) -> None:
        super().__init__()
        self.model = model
        self.runner = runner
        self.requests: TileRequests | None = None
        self.loaders: list[Worker] = []
        self.shut_down = False
        self.view = SlideView()
        self.view.hovered.connect(self.hover_at)
        self.view.stepKey.connect(self.step_selection)
        self.view.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        model.slide.events.slide.connect(self._on_slide)
        model.slide.events.slide_image.connect(self._on_slide_image)
        model.analysis.events.running.connect(self._on_running)
        model.selection.events.selection.connect(self._on_selection)
        model.selection.events.hover.connect(self._on_hover)
        model.regions.events.regions.connect(self._on_regions)
        model.cells.events.cells.connect(self._on_cells)

    # ------------------------------------------------------------------------------ the slide

    def _on_slide(self, event: Event) -> None:
        self.stop_loaders()
        opened: Opened | None = event.value
        if opened is None:
            self.view.clear_slide()
            self.view.set_overlay(None)
            self.show_recent()
            return
        if self.shut_down:  # a slide that finished opening as the window closed: no loader threads to leak
            return
        self.requests = TileRequests()
        self.view.set_slide(opened, self.requests)
        for i in range(LOADER_THREADS):
            w = Worker(lambda cancel, r=self.requests: tile_loader_task(opened.path, r, cancel), f"tiles-{i}")
            w.item.connect(self._on_tile)
            w.failed.connect(lambda exc: self.message.emit(f"Tile read failed: {exc.message}", 5000))
            self.loaders.append(w)
            self.runner.start(w)
        self.slideShown.emit(opened)
        self.view.update_tiles()

    def _on_slide_image(self, event: Event) -> None:
        opened: Opened = event.value
        if self.view.opened is not None and self.view.opened.thumbnail is not opened.thumbnail:
            self.view.set_base_image(opened)
        else:
            self.view.set_opened(opened)

    def _on_tile(self, item: object) -> None:
        if isinstance(item, TileLoaded):
            self.view.tile_loaded(item)
        elif isinstance(item, PatchLoaded):
            self.patchLoaded.emit(item)

    def stop_loaders(self) -> None:
        for w in self.loaders:
            w.cancel()
        if self.requests is not None:
            self.requests.close()
        self.loaders, self.requests = [], None

    def shutdown(self) -> None:
        """No more loaders: the window is closing."""
        self.shut_down = True
        if self.requests is not None:
            self.requests.close()

    def show_recent(self) -> None:
        """The empty canvas offers the recent slides."""
        self.view.empty_hint.set_recent([(r.path, r.name) for r in self.model.slide.recent()])
        self.view.place_overlays()

    # ------------------------------------------------------------------------------ selection, regions

    def _on_running(self, event: Event) -> None:
        if event.value:
            self.view.set_label(None)
            self.view.set_selection(None)

    def _on_selection(self, event: Event) -> None:
        index = event.value
        result = self.model.analysis.shown_result()
        if result is None or not 0 <= index < result.n_tiles:
            self.view.set_selection(None)
        else:
            self.view.set_selection(result.grid.rect(index))

    def _on_regions(self, event: Event) -> None:
        regions: list[Region] = event.value
        self.view.set_regions(regions[:MAX_REGIONS_DRAWN] if self.model.overlay.settings.show_regions else ())

    def _on_cells(self, event: Event) -> None:
        outlines = event.value  # viewer.cells.CellOutlines (empty when hidden or none)
        self.view.set_cells(outlines.cells, outlines.nuclei)

    def select_at(self, l0_x: float, l0_y: float) -> int:
        """Select the tile under a level-0 point (−1: none there)."""
        return self.model.selection.select_at(l0_x, l0_y)

    def step_selection(self, d_row: int, d_col: int) -> None:
        """Move to the nearest tile in that direction and keep it in view."""
        index = self.model.selection.step(d_row, d_col)
        result = self.model.analysis.shown_result()
        if index >= 0 and result is not None:
            x, y, w, h = result.grid.rect(index)
            if not self.view.visible_l0_rect().contains(QRectF(x, y, w, h)):
                self.view.center_on(x + w / 2, y + h / 2)

    def step_key(self, key: int) -> bool:
        """An arrow key pressed anywhere in a window steps the tile selection; False for any other key."""
        if key not in ARROW_STEPS:
            return False
        self.step_selection(*ARROW_STEPS[key])
        return True

    # ------------------------------------------------------------------------------ the pointer

    def hover_at(self, l0_x: float, l0_y: float) -> None:
        """The tile under the pointer in a tooltip (and in ``model.selection``'s hover event)."""
        text = self.model.selection.hover_at(l0_x, l0_y)
        if text:
            pos = self.view.mapToGlobal(self.view.mapFromScene(self.view.vb.mapViewToScene(QPointF(l0_x, l0_y))))
            QToolTip.showText(pos, text, self.view)
        else:
            QToolTip.hideText()

    def _on_hover(self, event: Event) -> None:
        if not event.value:
            QToolTip.hideText()
