"""The heatmap's controls, bound to ``model.overlay``: what is drawn and how, what is counted, and the domain
notice. A change made elsewhere (a menu, the kiosk, a script) shows on the controls without their signals: a
slider's whole percent must not overwrite the model's exact value.

``HeatmapControls`` are in both windows; ``ColourControls`` (colour by one class' probability, the minimum
confidence, the colour bar) only in the desktop's.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QSlider

from cellview.analysis.results import AnalysisResult, plural
from cellview.gui.canvas.controller import MAX_REGIONS_DRAWN
from cellview.gui.widgets.cards import text_label
from cellview.gui.widgets.heatmap import CategoryToggles, ColorBar, DomainBanner, FilterNotice
from cellview.outputs.legend import category_rows, describe_run_options, out_of_domain_row
from cellview.outputs.overlay import PER_SLIDE, STYLES, counted_text, describe_colours, describe_overrides
from cellview.viewer.analysis import ModelReady
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel
from cellview.viewer.overlay import DomainNotice

STYLE_LABELS = {"outline": "Outlines (stain stays visible)", "fill": "Fill (colour × confidence)",
                "fill+outline": "Fill and outlines"}


def _show_quietly(widget: QCheckBox | QComboBox | QSlider, value: object) -> None:
    widget.blockSignals(True)
    if isinstance(widget, QCheckBox):
        widget.setChecked(bool(value))
    elif isinstance(widget, QComboBox):
        widget.setCurrentIndex(int(value))  # type: ignore[call-overload]
    else:
        widget.setValue(int(value))  # type: ignore[call-overload]
    widget.blockSignals(False)


class HeatmapControls:
    """Show the heatmap and the regions, the drawing style and opacity, the category toggles with their counts,
    the filter notice, the colour and summary lines, the regions' sentence and the domain banner."""

    def __init__(self, model: ViewerModel) -> None:
        self.model = model
        overlay = model.overlay
        self.show_overlay = QCheckBox("Show heatmap")
        self.show_overlay.setChecked(overlay.settings.visible)
        self.show_overlay.toggled.connect(lambda on: overlay.set(visible=on))
        self.show_regions = QCheckBox("Outline malignant regions")
        self.show_regions.setToolTip("Connected malignant tiles at or above the minimum confidence, "
                                     "with bounding boxes and areas")
        self.show_regions.toggled.connect(lambda on: overlay.set(show_regions=on))
        self.regions_label = text_label("", "hint")
        self.regions_label.setVisible(False)
        self.show_cells = QCheckBox("Outline stained cells")
        self.show_cells.setToolTip("The cells the smear model read (its stained-cells rule), with their nuclei")
        self.show_cells.setChecked(model.cells.visible)
        self.show_cells.toggled.connect(model.cells.set_visible)
        self.show_cells.setVisible(False)  # a smear model's switch only (``show_cells_switch``)
        self.style_box = QComboBox()
        for style in STYLES:
            self.style_box.addItem(STYLE_LABELS[style], style)
        self.style_box.setCurrentIndex(STYLES.index(overlay.settings.style))
        self.style_box.setToolTip("Outlines leave the stain as scanned: a red fill over eosin pink reads as more "
                                  "staining")
        self.style_box.currentIndexChanged.connect(lambda _i: overlay.set(style=self.style_box.currentData()))
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(int(round(overlay.settings.opacity * 100)))
        self.opacity.valueChanged.connect(lambda v: overlay.set(opacity=v / 100))
        self.toggles = CategoryToggles()
        self.toggles.changed.connect(lambda: overlay.set(categories=self.toggles.selected()))
        self.filter_notice = FilterNotice()  # a filter or an override of the domain warning is never silent
        self.filter_notice.resetRequested.connect(lambda: overlay.set(**PER_SLIDE))
        self.colour_hint = text_label("", "hint")
        self.summary_label = text_label("", "hint")
        self.domain_banner = DomainBanner()
        self.domain_banner.showAnywayToggled.connect(overlay.show_calls_anyway)
        overlay.events.overlay.connect(self._on_overlay)
        overlay.events.domain.connect(self._on_domain)
        model.regions.events.regions.connect(self._on_regions)
        model.settings.events.settings.connect(lambda e: self.show_summary())
        model.settings.events.model_options.connect(lambda e: self.show_cells_switch())
        model.cells.events.cells.connect(lambda e: self.show_cells_switch())
        self.show_colours()

    def _on_overlay(self, event: Event) -> None:
        ov = event.value
        for widget, value in ((self.show_overlay, ov.visible), (self.show_regions, ov.show_regions),
                              (self.style_box, STYLES.index(ov.style)), (self.opacity, round(ov.opacity * 100))):
            _show_quietly(widget, value)
        self.toggles.set_selected(ov.categories)
        self.filter_notice.set_text(describe_overrides(ov))
        self.show_colours()

    def show_cells_switch(self) -> None:
        """The stained-cells switch, in step with ``model.cells``, shown for a model that reads stained cells."""
        cells = self.model.cells
        _show_quietly(self.show_cells, cells.visible)
        rule = self.model.settings.options.reading.foreground.rule
        self.show_cells.setVisible(rule == "stained-cells" or bool(cells.shown.method))

    def show_colours(self) -> None:
        ov = self.model.overlay.settings
        names = self.model.analysis.spec.class_names if self.model.analysis.spec else ()
        self.opacity.setEnabled(ov.draws_fill)
        self.colour_hint.setText(f"{describe_colours(ov, names)} Hover or click a tile.")

    def _on_domain(self, event: Event) -> None:
        notice: DomainNotice = event.value
        self.domain_banner.set_notice(notice)
        self.toggles.set_domain(notice)

    def _on_regions(self, event: Event) -> None:
        text = self.model.regions.note()
        if len(event.value) > MAX_REGIONS_DRAWN:
            text += f" The {MAX_REGIONS_DRAWN} largest are drawn."
        self.regions_label.setText(text)
        self.regions_label.setVisible(bool(text))

    def show_counts(self, result: AnalysisResult | None) -> None:
        """The painted result's counts (the legend's rows: the exports count the same tiles) and summary."""
        if result is None:
            self.toggles.set_counts(None)
            self.toggles.set_out_of_domain(None)
            self.summary_label.setText("")
            return
        ov = self.model.overlay.settings
        rows = category_rows(result, ov)
        self.toggles.set_counts({r.key: r.count for r in rows}, {r.key: r.percent for r in rows})
        self.toggles.set_out_of_domain(out_of_domain_row(result, ov))
        self.show_summary()

    def show_summary(self) -> None:
        result = self.model.analysis.shown_result()
        self.summary_label.setText("" if result is None else self.summary_text(result))

    def summary_text(self, result: AnalysisResult) -> str:
        text = f"{result.n_done:,} of {plural(result.n_tiles, 'tile')} classified"
        if result.n_failed:
            text += f", {result.n_failed:,} unreadable"
        if result.status == "cancelled":
            text += " (run cancelled: partial result)"
        text += "."
        options = describe_run_options(result.params, result.stain)
        if options:
            text += f" {options}."
        ov = self.model.overlay.settings
        if ov.min_confidence > 0:
            text += f" Counts: {counted_text(result, ov)}."
        if self.model.analysis.stale:
            text += " Settings changed since this result: Analyse again to apply them."
        return text


class ColourControls:
    """Colour by category or one class' probability (with its colour bar), and the minimum confidence."""

    def __init__(self, model: ViewerModel, lut: np.ndarray) -> None:
        self.model = model
        overlay = model.overlay
        self.mode_box = QComboBox()
        self.mode_box.addItem("Category (colour × confidence)", -1)
        self.mode_box.currentIndexChanged.connect(self._mode_changed)
        self.threshold = QSlider(Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 100)
        self.threshold.setValue(0)
        self.threshold_label = QLabel("0%")
        self.threshold_label.setMinimumWidth(34)
        self.threshold.valueChanged.connect(self._threshold_changed)
        self.colorbar = ColorBar(lut)
        self.colorbar.setVisible(False)
        overlay.events.overlay.connect(self._on_overlay)
        model.analysis.events.model_ready.connect(self._on_model_ready)
        self.show_colorbar()

    def _threshold_changed(self, value: int) -> None:
        self.threshold_label.setText(f"{value}%")
        self.model.overlay.set(min_confidence=value / 100)

    def _mode_changed(self, *args) -> None:
        k = self.mode_box.currentData()
        self.model.overlay.set(mode=int(k if k is not None else -1))

    def _on_overlay(self, event: Event) -> None:
        ov = event.value
        _show_quietly(self.threshold, round(ov.min_confidence * 100))
        self.threshold_label.setText(f"{round(ov.min_confidence * 100)}%")
        self.show_colorbar()

    def show_colorbar(self) -> None:
        ov = self.model.overlay.settings
        names = self.model.analysis.spec.class_names if self.model.analysis.spec else ()
        self.colorbar.setVisible(not ov.by_category)
        if not ov.by_category and ov.mode < len(names):
            self.colorbar.set_title(f"P({names[ov.mode]})")

    def _on_model_ready(self, event: Event) -> None:
        ready: ModelReady = event.value
        self.fill_modes(ready.spec.class_names)

    def fill_modes(self, class_names: tuple[str, ...]) -> None:
        current = self.mode_box.currentData()
        self.mode_box.blockSignals(True)
        while self.mode_box.count() > 1:
            self.mode_box.removeItem(1)
        for i, name in enumerate(class_names):
            self.mode_box.addItem(f"Probability of {name}", i)
        idx = self.mode_box.findData(current)
        self.mode_box.setCurrentIndex(idx if idx >= 0 else 0)
        self.mode_box.blockSignals(False)
        if self.mode_box.currentData() != self.model.overlay.settings.mode:
            self.model.overlay.set(mode=int(self.mode_box.currentData()))
