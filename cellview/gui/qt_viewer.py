"""The parts both windows are made of (napari's ``QtViewer``): the viewer model on a Qt worker runner, the
canvas with its heatmap painter, and the panels both show: the analysis status, the heatmap controls and the
tile inspector. The desktop window lays them out in a side panel beside its own (model, run options, tissue,
labels); the kiosk in its touch column beside its call, cards and sheets. Neither window subclasses the other.

Signals let tests, benchmarks and scripts wait for what a user would see.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QApplication, QWidget

from cellview.analysis.results import AnalysisParams
from cellview.gui import settings as cfg
from cellview.gui.canvas.controller import CanvasController
from cellview.gui.canvas.painter import OverlayPainter
from cellview.gui.panels.heatmap import HeatmapControls
from cellview.gui.panels.inspector import InspectorPanel
from cellview.gui.panels.run_status import AnalysisStatus
from cellview.gui.worker import QtRunner, Worker
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel
from cellview.viewer.slide import Opened


class QtViewer(QObject):
    """``model`` (a ``ViewerModel`` whose jobs run on ``runner``), ``canvas`` (its ``view``), ``painter``,
    ``run_status``, ``heatmap`` and ``inspector``; ``window`` is the one they are shown in."""

    slideOpened = Signal(object)  # Opened
    analysisStarted = Signal(object)  # the Worker, before its thread starts
    analysisFinished = Signal(object)  # AnalysisResult
    overlayPainted = Signal()
    patchShown = Signal(int)
    tissueShown = Signal()
    regionsShown = Signal()
    errorShown = Signal(str, str)
    domainShown = Signal(object)  # DomainNotice, once the banner, the legend row and the overlay show it

    def __init__(self, window: QWidget, analysis_defaults: AnalysisParams | None = None,
                 labelling: bool = False) -> None:
        super().__init__(window)
        self.window = window
        self.runner = QtRunner(window)
        self.runner.started.connect(self._on_job_started)
        self.model = ViewerModel(self.runner, analysis_defaults, store=cfg.STORE, labelling=labelling)
        self.analysis_worker: Worker | None = None
        self.canvas = CanvasController(self.model, self.runner)
        self.view = self.canvas.view
        self.run_status = AnalysisStatus(self.model)
        self.heatmap = HeatmapControls(self.model)
        self.inspector = InspectorPanel(self.model, self.canvas)
        self.painter = OverlayPainter(self.model, self.view)
        self.painter.updated.connect(self.heatmap.show_counts)
        self.painter.updated.connect(self.inspector.refresh)
        self.painter.painted.connect(self.overlayPainted)
        self.canvas.slideShown.connect(self.slideOpened)
        self.inspector.patchShown.connect(self.patchShown)
        self.model.analysis.events.result.connect(self._on_result)
        self.model.overlay.events.domain.connect(lambda e: self.domainShown.emit(e.value))
        self.model.regions.events.regions.connect(lambda e: self.regionsShown.emit())
        self.model.slide.events.slide.connect(self._show_title)

    def _on_job_started(self, name: str, worker: Worker) -> None:
        if name == "analysis":
            self.analysis_worker = worker
            self.analysisStarted.emit(worker)

    def _show_title(self, event: Event) -> None:
        opened: Opened | None = event.value
        if opened is None:
            self.window.setWindowTitle("CellView")
        elif not self.canvas.shut_down:
            self.window.setWindowTitle(f"{opened.info.name} — CellView")

    def _on_result(self, event: Event) -> None:
        if event.value is not None:
            self.analysisFinished.emit(event.value)

    @property
    def analysis(self) -> Worker | None:
        """The running analysis' worker (None when none runs)."""
        return self.analysis_worker if self.model.analysis.running else None

    def take_focus(self) -> None:
        """Make the window the active one with the canvas focused, so keyboard shortcuts work at once.

        Without a window manager (a kiosk has none) nothing activates a window: shortcuts would do
        nothing until the canvas was clicked. Called at start and after every dialog.
        """
        window = self.window
        if not window.isVisible():
            return
        if QApplication.platformName() != "offscreen":  # which cannot raise windows (and says so)
            window.raise_()
        window.activateWindow()
        self.view.setFocus(Qt.FocusReason.ActiveWindowFocusReason)

    def take_focus_soon(self) -> None:
        """``take_focus`` once the event loop runs (a window's ``showEvent``)."""
        QTimer.singleShot(0, self.take_focus)

    def shutdown(self, timeout_ms: int = 15000) -> bool:
        """Stop every worker (analysis first) and wait for their threads; True if all stopped."""
        self.canvas.shutdown()
        self.painter.stop()
        if self.analysis_worker is not None:
            self.analysis_worker.cancel()
        return self.runner.shutdown(timeout_ms)
