"""The heatmap over the slide, drawn from ``outputs.overlay`` exactly as the exports draw it.

While batches stream in, the overlay is repainted at most every ``REPAINT_INTERVAL_MS`` and the malignant
regions recomputed at most every ``REGIONS_INTERVAL_MS``; a finished run, a new result or another overlay
setting repaints at once. After each paint ``updated`` carries the result shown (the panels' counts, the
inspector, the kiosk's call follow it), then ``painted`` fires.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, QRectF, QTimer, Signal

from cellview.analysis.model_spec import CATEGORY_COLORS
from cellview.analysis.results import AnalysisResult
from cellview.gui.canvas.view import SlideView
from cellview.outputs.overlay import (
    category_contours,
    fill_rgba,
    hatches_out_of_domain,
    out_of_domain_runs,
    probability_lut,
)
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel

REPAINT_INTERVAL_MS = 100
REGIONS_INTERVAL_MS = 500
"""While batches stream in, malignant regions are recomputed and redrawn at most this often."""


class OverlayPainter(QObject):
    """Paints ``model.analysis.shown_result()`` with ``model.overlay.settings`` on ``view``."""

    updated = Signal(object)  # the AnalysisResult shown, or None
    painted = Signal()

    def __init__(self, model: ViewerModel, view: SlideView) -> None:
        super().__init__()
        self.model = model
        self.view = view
        self.lut = probability_lut()
        self._dirty = False
        self._repaint_timer = QTimer(self, interval=REPAINT_INTERVAL_MS)
        self._repaint_timer.timeout.connect(self._flush)
        self._regions_timer = QTimer(self, singleShot=True, interval=REGIONS_INTERVAL_MS)
        self._regions_timer.timeout.connect(self.update_regions)
        view.overlay.setOpacity(model.overlay.settings.opacity)
        analysis = model.analysis.events
        analysis.running.connect(self._on_running)
        analysis.tiles.connect(self._on_tiles)
        analysis.result.connect(self._on_result)
        model.overlay.events.overlay.connect(self._on_overlay)

    def _on_running(self, event: Event) -> None:
        if event.value:
            self._dirty = False
            self._repaint_timer.start()
        else:
            self._repaint_timer.stop()
            self._flush()

    def _on_tiles(self, event: Event) -> None:
        self._dirty = True

    def _on_result(self, event: Event) -> None:
        self._dirty = False
        self.repaint()

    def _on_overlay(self, event: Event) -> None:
        self.view.overlay.setOpacity(event.value.opacity)
        self.repaint()

    def _flush(self) -> None:
        if self._dirty:
            self._dirty = False
            self.repaint()

    def stop(self) -> None:
        self._repaint_timer.stop()

    def update_regions(self, *args) -> None:
        self.model.regions.update()

    def overlay_rgba(self, result: AnalysisResult) -> np.ndarray:
        """The fill image, one pixel per grid cell, exactly as painted (``overlay.fill_rgba``)."""
        return fill_rgba(result, self.model.overlay.settings, self.lut)

    def repaint(self, *args) -> None:
        result = self.model.analysis.shown_result()
        ov = self.model.overlay.settings
        if result is None:
            self.view.set_overlay(None)
            self.view.set_out_of_domain(np.zeros((0, 4)))
            self.view.set_contours(())
            self.view.set_label(None)
            self.updated.emit(None)
            self.painted.emit()
            return
        g = result.grid
        rgba = g.to_display(self.overlay_rgba(result))
        rows, cols = rgba.shape[:2]
        self.view.set_overlay(rgba, QRectF(0, 0, cols * g.stride_l0_x, rows * g.stride_l0_y))
        # One tile covering the whole image is shown as a label, not as a tint over the cell. Out-of-domain
        # tiles are tinted grey and hatched in every style (the outline style's fill holds only them).
        hatch = hatches_out_of_domain(result, ov)
        self.view.overlay.setVisible(ov.visible and (ov.draws_fill or hatch) and not g.whole_image)
        self.view.set_out_of_domain(out_of_domain_runs(result, ov))
        self.view.set_contours(category_contours(result, ov) if ov.visible and not g.whole_image else ())
        self.updated.emit(result)
        self._show_single_label(result)
        if self.model.analysis.running:
            if not self._regions_timer.isActive():  # throttled while batches stream in
                self._regions_timer.start()
        else:
            self._regions_timer.stop()
            self.update_regions()
        self.painted.emit()

    def _show_single_label(self, result: AnalysisResult) -> None:
        """A slide of one tile (one cell, a small field) gets its call as a label, not a tint."""
        if not (result.grid.whole_image or result.n_tiles == 1):
            self.view.set_label(None)
            return
        level = result.image_level()
        if not level["pred_class"]:
            self.view.set_label(None)
            return
        color = CATEGORY_COLORS[level["pred_category"]]
        unreliable = ""
        if result.has_domain and not result.in_domain.any():  # the call of an image unlike the training data
            unreliable = ("<br><span style='color:#ffb347; font-size:10pt;'>⚠ out of the model's domain: "
                          "unreliable</span>")
        self.view.set_label(
            f"<div style='background-color:rgba(20,22,25,215); padding:6px 10px; font-size:15pt;'>"
            f"<span style='color:{color}; font-weight:700;'>{level['pred_class']}</span>"
            f"<span style='color:#e6e9ec;'>&nbsp;{level['confidence']:.0%}</span>"
            f"<span style='color:#aab2b9; font-size:10pt;'>&nbsp;({level['pred_category']})</span>{unreliable}</div>")
