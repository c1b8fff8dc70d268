"""The tile inspector bound to the viewer: the selected tile's call, its patch as the model was fed it (read by
the canvas' loaders, stain-normalised as the run was) and its class activation map (``model.explain``)."""

from __future__ import annotations

from PySide6.QtCore import Signal

from cellview.analysis.results import AnalysisResult
from cellview.gui.canvas.controller import CanvasController
from cellview.gui.canvas.loaders import PatchLoaded, PatchRequest
from cellview.gui.widgets.inspector import TileInspector
from cellview.viewer.analysis import ModelReady
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel


class InspectorPanel(TileInspector):
    """A ``TileInspector`` that follows ``model.selection`` and ``model.explain``; ``patchShown`` fires with the
    tile's index once its patch is on screen."""

    patchShown = Signal(int)

    def __init__(self, model: ViewerModel, canvas: CanvasController) -> None:
        super().__init__()
        self.model = model
        self.canvas = canvas
        self.explainToggled.connect(model.explain.set_on)
        self.explainClassChosen.connect(model.explain.set_class)
        model.slide.events.slide.connect(lambda e: self.clear() if e.value is None else None)
        model.analysis.events.model_ready.connect(self._on_model_ready)
        model.analysis.events.running.connect(lambda e: self.clear() if e.value else None)
        model.selection.events.selection.connect(self._on_selection)
        model.explain.events.explanation.connect(lambda e: self.set_explanation(e.value))
        model.explain.events.stain.connect(self.request_patch)
        canvas.patchLoaded.connect(self._on_patch)

    def _on_model_ready(self, event: Event) -> None:
        ready: ModelReady = event.value
        self.set_class_names(ready.spec.class_names)

    def _on_selection(self, event: Event) -> None:
        index = event.value
        result = self.model.analysis.shown_result()
        if result is None or not 0 <= index < result.n_tiles:
            self.clear()
            return
        self.show_tile(index, result, self.model.slide.mpp_um())
        self.request_patch()

    def refresh(self, result: AnalysisResult | None) -> None:
        """A repaint (a streaming run): the selected tile's call may have arrived."""
        if result is not None and 0 <= self.model.selection.index < result.n_tiles \
                and self.index == self.model.selection.index:
            self.show_tile(self.model.selection.index, result, self.model.slide.mpp_um())

    def request_patch(self, *args) -> None:
        """The selected tile's patch as the model was fed it (once the run's stain transform is fitted)."""
        result, index = self.model.analysis.shown_result(), self.model.selection.index
        requests = self.canvas.requests
        if requests is None or result is None or not 0 <= index < result.n_tiles:
            return
        if self.model.explain.stain_pending:
            self.set_patch_note("Normalising the stain as the model saw it…")
            self.model.explain.request_stain()  # events.stain asks again
            return
        stain = self.model.explain.patch_stain()
        self.set_patch_note("Stain-normalised, as fed to the model" if stain is not None else "")
        requests.add_patch(PatchRequest(index, result.grid, self.model.slide.mpp_um(), self.PATCH_PX, stain))

    def _on_patch(self, item: PatchLoaded) -> None:
        result = self.model.analysis.shown_result()
        if result is not None and item.grid_id == id(result.grid) and item.index == self.index:
            self.set_patch(item.rgb, item.nuclei, item.contoured)
            self.patchShown.emit(item.index)
