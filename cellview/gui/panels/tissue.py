"""The tissue mask preview (``model.tissue``): what will be analysed, drawn dimmed with a cyan outline over the
slide, and the tissue settings it is computed with (``model.settings``)."""

from __future__ import annotations

import cv2
import numpy as np
from PySide6.QtCore import QObject, QRectF, QTimer, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QWidget

from cellview.gui.canvas.view import SlideView
from cellview.gui.widgets.cards import text_label
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel

PREVIEW_DELAY_MS = 300
"""A setting changed: the preview is computed again once the spin boxes have been still this long."""


class TissuePanel(QObject):
    """``tissue_box`` (preview on or off), ``tissue_form`` (the settings) and ``tissue_label`` (what the mask
    found); ``shown`` fires once a mask is on the slide."""

    shown = Signal()

    def __init__(self, model: ViewerModel, view: SlideView) -> None:
        super().__init__()
        self.model = model
        self.view = view
        d = model.settings.params
        self.tissue_box = QCheckBox("Preview what will be analysed")
        self.tissue_box.toggled.connect(self._toggled)
        form = QFormLayout()
        self.tissue_method = QComboBox()
        self.tissue_method.addItem("Saturation (H&E)", "saturation")
        self.tissue_method.addItem("Optical density (pale tissue)", "od")
        self.tissue_method.setCurrentIndex(0 if d.tissue.method == "saturation" else 1)
        self.tissue_min = QDoubleSpinBox()
        self.tissue_min.setRange(0.0, 1.0)
        self.tissue_min.setDecimals(3)  # as the threshold found is printed below it
        self.tissue_min.setSingleStep(0.01)
        self.tissue_min.setValue(d.tissue.min_threshold)
        self.tissue_min.setToolTip("Otsu's threshold on the tissue signal is kept at least this high")
        self.tissue_min_obj = QDoubleSpinBox()
        self.tissue_min_obj.setRange(0, 1e7)
        self.tissue_min_obj.setDecimals(0)
        self.tissue_min_obj.setSingleStep(1000)
        self.tissue_min_obj.setSuffix(" µm²")
        self.tissue_min_obj.setValue(d.tissue.min_object_um2)
        self.tissue_frac = QDoubleSpinBox()
        self.tissue_frac.setRange(0.0, 1.0)
        self.tissue_frac.setSingleStep(0.05)
        self.tissue_frac.setValue(d.tissue_threshold)
        self.tissue_frac.valueChanged.connect(lambda v: model.settings.set(tissue_threshold=float(v)))
        form.addRow("Method", self.tissue_method)
        form.addRow("Min. threshold", self.tissue_min)
        form.addRow("Min. object", self.tissue_min_obj)
        form.addRow("Tissue per tile ≥", self.tissue_frac)
        for w in (self.tissue_method, self.tissue_min, self.tissue_min_obj):
            sig = w.currentIndexChanged if isinstance(w, QComboBox) else w.valueChanged
            sig.connect(self._params_changed)
        self.tissue_form = QWidget()
        self.tissue_form.setLayout(form)
        self.tissue_form.setVisible(False)
        form.setContentsMargins(0, 0, 0, 0)
        self.tissue_label = text_label("", "hint")
        self._timer = QTimer(self, singleShot=True, interval=PREVIEW_DELAY_MS)
        self._timer.timeout.connect(self.update_preview)
        model.slide.events.slide.connect(self._on_slide)
        model.tissue.events.tissue.connect(self._on_tissue)

    def _toggled(self, on: bool) -> None:
        self.view.tissue_item.setVisible(on)
        self.tissue_form.setVisible(on)
        self.tissue_label.setVisible(on)
        if on:
            self.update_preview()

    def _params_changed(self, *args) -> None:
        self.model.settings.set_tissue(method=self.tissue_method.currentData(),
                                       min_threshold=float(self.tissue_min.value()),
                                       min_object_um2=float(self.tissue_min_obj.value()))
        if self.tissue_box.isChecked():
            self._timer.start()

    def _on_slide(self, event: Event) -> None:
        if event.value is None:
            self.tissue_label.setText("")
        elif self.tissue_box.isChecked():
            self.update_preview()

    def update_preview(self) -> None:
        if self.model.slide.opened is None or not self.tissue_box.isChecked():
            return
        self.tissue_label.setText("Computing tissue mask…")
        self.model.tissue.preview()

    def _on_tissue(self, event: Event) -> None:
        if self.tissue_box.isChecked():
            self._show(event.value)

    def _show(self, mask) -> None:
        m = mask.mask
        rgba = np.zeros((*m.shape, 4), np.uint8)
        rgba[~m] = (10, 12, 14, 170)  # skipped: dimmed
        edge = m & ~cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        rgba[edge] = (0, 229, 255, 255)  # tissue outline
        self.view.set_tissue(rgba, QRectF(0, 0, m.shape[1] * mask.downsample, m.shape[0] * mask.downsample))
        self.view.tissue_item.setVisible(self.tissue_box.isChecked())
        t = self.model.settings.current().tissue
        self.tissue_label.setText(
            f"{mask.fraction:.0%} of the slide is tissue. Threshold {mask.threshold:.3f} (Otsu, kept within "
            f"{t.min_threshold:.3f}–{t.max_threshold:.3f}). Dimmed areas are skipped.")
        self.shown.emit()
