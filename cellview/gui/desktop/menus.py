"""The desktop's menu bar: File (open, recent, model, exports), View (zoom, heatmap, regions, cells, style), Analysis
and Help. Its entries follow the model like the buttons do, and a closed menu gives the keys back to the slide.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QApplication, QMenu, QMessageBox

from cellview.gui.desktop.shortcuts import ShortcutsDialog
from cellview.outputs.overlay import STYLES
from cellview.viewer.events import Event


class MainMenus:
    """Builds ``window``'s menu bar; keeps ``act_analyse``, ``act_cancel``, ``export_actions``, ``act_heatmap``,
    ``act_regions``, ``act_cells`` and ``recent_menu`` in step with the model."""

    def __init__(self, window: Any) -> None:
        self.window = window
        self.model = model = window.model
        view, exports = window.view, window.exports
        bar = window.menuBar()
        m = bar.addMenu("&File")
        self.act_open = m.addAction("&Open slide or image…", QKeySequence.StandardKey.Open, window.choose_slide)
        self.recent_menu = m.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self.fill_recent)
        m.addAction("Open &model…", window.model_panel.choose_model_file)
        m.addSeparator()
        ex = m.addMenu("&Export")
        self.export_actions = [
            ex.addAction("All formats to a folder (as the command line writes them)…", exports.export_all_dialog),
            ex.addAction("Annotated PNG of the whole slide…", lambda: exports.export_dialog("png")),
            ex.addAction("Annotated PNG of the current view…", lambda: exports.export_dialog("view")),
            ex.addAction("Tiles as CSV…", lambda: exports.export_dialog("csv")),
            ex.addAction("Tiles and malignant regions as GeoJSON (QuPath)…", lambda: exports.export_dialog("geojson")),
            ex.addAction("Run metadata (JSON)…", lambda: exports.export_dialog("json")),
        ]
        m.addSeparator()
        m.addAction("&Quit", QKeySequence.StandardKey.Quit, window.close)
        m = bar.addMenu("&View")
        m.addAction("Fit slide", QKeySequence("Ctrl+0"), view.fit)
        zoom_in = m.addAction("Zoom in", lambda: view.zoom(1.5))
        zoom_in.setShortcuts([QKeySequence(QKeySequence.StandardKey.ZoomIn), QKeySequence("Ctrl+=")])  # no Shift needed
        m.addAction("Zoom out", QKeySequence.StandardKey.ZoomOut, lambda: view.zoom(1 / 1.5))
        self.act_heatmap = QAction("Show heatmap", window, checkable=True, checked=True, shortcut=QKeySequence("H"))
        self.act_heatmap.toggled.connect(lambda on: model.overlay.set(visible=on))
        m.addAction(self.act_heatmap)
        self.act_regions = QAction("Outline malignant regions", window, checkable=True, checked=False,
                                   shortcut=QKeySequence("R"))
        self.act_regions.toggled.connect(lambda on: model.overlay.set(show_regions=on))
        m.addAction(self.act_regions)
        self.act_cells = QAction("Outline stained cells (smear models)", window, checkable=True,
                                 checked=model.cells.visible, shortcut=QKeySequence("C"))
        self.act_cells.setToolTip("The cells a smear model read (its stained-cells rule), with their nuclei")
        self.act_cells.toggled.connect(model.cells.set_visible)
        m.addAction(self.act_cells)
        m.addAction("Next drawing style (outlines / fill)", QKeySequence("O"), self.next_style)
        self.act_overview = QAction("Overview (while zoomed in)", window, checkable=True, checked=True)
        self.act_overview.setToolTip("The slide's thumbnail with the view's box, top right, while part of the slide "
                                     "is out of view")
        self.act_overview.toggled.connect(view.show_overview)
        m.addAction(self.act_overview)
        m = bar.addMenu("&Analysis")
        self.act_analyse = m.addAction("&Analyse", QKeySequence("Ctrl+R"), window.start_analysis)
        self.act_cancel = m.addAction("&Cancel", QKeySequence("Esc"), window.cancel_analysis)
        m = bar.addMenu("&Help")
        m.addAction("&Keyboard shortcuts", QKeySequence(QKeySequence.StandardKey.HelpContents), self.show_shortcuts)
        m.addAction("About CellView", self.about)
        for menu in bar.findChildren(QMenu):
            self.return_focus_after(menu)
        model.overlay.events.overlay.connect(self._on_overlay)
        model.cells.events.cells.connect(self._on_cells)
        for events in (model.slide.events.slide, model.analysis.events.running, model.analysis.events.result):
            events.connect(lambda e: self.sync())

    def sync(self) -> None:
        """Nothing to analyse without a slide, nothing to export without a result."""
        self.act_analyse.setEnabled(self.model.analysis.can_analyse)
        self.act_cancel.setEnabled(self.model.analysis.running)
        for act in self.export_actions:
            act.setEnabled(self.model.exports.can_export)

    def _on_overlay(self, event: Event) -> None:
        ov = event.value
        for action, on in ((self.act_heatmap, ov.visible), (self.act_regions, ov.show_regions)):
            action.blockSignals(True)
            action.setChecked(bool(on))
            action.blockSignals(False)

    def _on_cells(self, event: Event) -> None:
        self.act_cells.blockSignals(True)
        self.act_cells.setChecked(self.model.cells.visible)
        self.act_cells.blockSignals(False)

    def next_style(self) -> None:
        style = STYLES[(STYLES.index(self.model.overlay.settings.style) + 1) % len(STYLES)]
        self.model.overlay.set(style=style)

    def fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.model.slide.recent()
        for item in recent:
            self.recent_menu.addAction(item.name, lambda p=item.path: self.window.open_path(p)).setToolTip(item.path)
        if not recent:
            self.recent_menu.addAction("(none)").setEnabled(False)

    def return_focus_after(self, menu: QMenu) -> None:
        """Esc on ``menu`` gives the keys back to the slide (arrows step tiles); a menu added later calls it too."""
        menu.aboutToHide.connect(lambda: QTimer.singleShot(0, self._focus_canvas_after_menu))

    def _focus_canvas_after_menu(self) -> None:
        """A menu closed without opening anything: the canvas takes the keyboard again, and the menu bar
        leaves its keyboard mode (else the arrow keys would walk the menus)."""
        if QApplication.activePopupWidget() is None and QApplication.activeModalWidget() is None:
            self.window.view.setFocus(Qt.FocusReason.PopupFocusReason)

    def show_shortcuts(self) -> None:
        ShortcutsDialog(self.window.menuBar(), self.window).exec()
        self.window.take_focus()

    def about(self) -> None:
        from cellview import __version__

        QMessageBox.about(self.window, "About CellView",
                          f"<b>CellView {__version__}</b><br>Whole-slide tile classification "
                          "(malignant / benign / normal) with ONNX models.<br><br>Research use only.")
        self.window.take_focus()
