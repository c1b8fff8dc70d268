"""The desktop's side panel: which panel's widgets go in which card, in which order (Model, Analysis with the
slide's call, Heatmap, the labelling card once installed, Tissue mask, Tile inspector), in a scrolling dock on
the right."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDockWidget, QFormLayout, QHBoxLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from cellview.gui.widgets.cards import section, text_label
from cellview.gui.widgets.scroll import WheelGuard


class SidePanel:
    """Lays out ``window``'s panels as cards; ``layout`` and ``labels_at`` say where a later card goes (the
    labelling card, after the heatmap's), ``scroll`` is the panel's scroll area, ``dock`` holds it."""

    def __init__(self, window: Any) -> None:
        viewer = window.viewer
        panel = QWidget()
        lay = QVBoxLayout(panel)
        lay.setContentsMargins(10, 8, 10, 6)
        lay.setSpacing(8)
        lay.addWidget(self._model_card(window.model_panel))
        lay.addWidget(self._analysis_card(window.run_controls, viewer.run_status, window.call_panel))
        lay.addWidget(self._heatmap_card(viewer.heatmap, window.colours))
        self.layout, self.labels_at = lay, lay.count()
        lay.addWidget(self._tissue_card(window.tissue_panel))
        card, c = section("Tile inspector")
        c.addWidget(viewer.inspector)
        lay.addWidget(card)
        lay.addStretch(1)
        notice = text_label("Research use only — not for clinical diagnosis.", "hint", wrap=False)
        notice.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(notice)

        scroll = QScrollArea()
        scroll.setWidget(panel)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll = scroll
        self.wheel_guard = WheelGuard(scroll)
        self.wheel_guard.guard(panel)
        self.dock = QDockWidget("", window)
        self.dock.setObjectName("panel")
        self.dock.setTitleBarWidget(QWidget())
        self.dock.setFeatures(QDockWidget.DockWidgetFeature.NoDockWidgetFeatures)
        self.dock.setWidget(scroll)
        self.dock.setMinimumWidth(380)
        window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)

    @staticmethod
    def _model_card(p: Any) -> QWidget:
        card, c = section("Model")
        row = QHBoxLayout()
        row.addWidget(p.model_box, 1)
        row.addWidget(p.open_model_btn)
        row.addWidget(p.card_btn)
        c.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Run on"))
        row.addWidget(p.device_box, 1)
        c.addLayout(row)
        c.addWidget(p.model_info)
        c.addWidget(p.run_info)
        return card

    @staticmethod
    def _analysis_card(run: Any, status: Any, call: Any) -> QWidget:
        card, c = section("Analysis")
        row = QHBoxLayout()
        row.addWidget(run.analyse_btn, 1)
        row.addWidget(run.cancel_btn)
        c.addLayout(row)
        c.addWidget(status.progress)
        c.addWidget(status.rate_label)
        for label in call.widgets():  # the slide's call, in the files' words, right under the run
            c.addWidget(label)
        c.addWidget(status.levels_label)
        c.addWidget(run.nuclei_box)
        c.addLayout(run.run_options)
        c.addWidget(run.auto_box)
        return card

    @staticmethod
    def _heatmap_card(heatmap: Any, colours: Any) -> QWidget:
        card, c = section("Heatmap")
        c.addWidget(heatmap.show_overlay)
        c.addWidget(heatmap.show_regions)
        c.addWidget(heatmap.regions_label)
        c.addWidget(heatmap.show_cells)
        form = QFormLayout()
        form.setHorizontalSpacing(10)
        form.addRow("Draw", heatmap.style_box)
        form.addRow("Colour by", colours.mode_box)
        form.addRow("Fill opacity", heatmap.opacity)
        thr_row = QHBoxLayout()
        thr_row.addWidget(colours.threshold, 1)
        thr_row.addWidget(colours.threshold_label)
        form.addRow("Min. confidence", thr_row)
        c.addLayout(form)
        c.addWidget(heatmap.toggles)
        c.addWidget(heatmap.filter_notice)
        c.addWidget(heatmap.colour_hint)
        c.addWidget(colours.colorbar)
        c.addWidget(heatmap.summary_label)
        return card

    @staticmethod
    def _tissue_card(tissue: Any) -> QWidget:
        card, c = section("Tissue mask")
        c.addWidget(tissue.tissue_box)
        c.addWidget(tissue.tissue_form)
        c.addWidget(tissue.tissue_label)
        return card
