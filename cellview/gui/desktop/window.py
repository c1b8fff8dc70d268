"""The desktop viewer's main window, composed of parts: the shared ``QtViewer`` (canvas, heatmap, analysis
status, inspector over one ``ViewerModel``), the desktop's own panels (model, run options, colours, tissue
mask), the side panel that lays them out as cards, the menus, the status bar, the exports and the labelling
tools. The window itself only holds them together and answers what a part asks of the user (an error, a
pixel size, where to save, whether to replace a file).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QDialog, QFileDialog, QMainWindow, QMessageBox, QVBoxLayout, QWidget

from cellview.analysis.results import AnalysisParams, AnalysisResult
from cellview.base.errors import CellviewError
from cellview.gui import settings as cfg
from cellview.gui.canvas.view import ARROW_STEPS
from cellview.gui.desktop.dialogs import MppDialog
from cellview.gui.desktop.exports import ExportActions
from cellview.gui.desktop.labels import install_labels
from cellview.gui.desktop.menus import MainMenus
from cellview.gui.desktop.side_panel import SidePanel
from cellview.gui.desktop.status import StatusLine
from cellview.gui.panels.heatmap import ColourControls
from cellview.gui.panels.model import ModelPanel
from cellview.gui.panels.run_controls import RunControls
from cellview.gui.panels.tissue import TissuePanel
from cellview.gui.qt_viewer import QtViewer
from cellview.slides.slide import SUPPORTED_SUFFIXES
from cellview.viewer.slide import Opened


class MainWindow(QMainWindow):
    """The viewer: ``viewer`` (the shared parts and their signals), ``model`` (its ``ViewerModel``) and ``view``
    (the slide) in the middle; ``model_panel``, ``run_controls``, ``colours``, ``tissue_panel`` and ``labels_panel``
    in ``side`` (the dock); ``menus``, ``status`` and ``exports``."""

    def __init__(self, analysis_defaults: AnalysisParams | None = None) -> None:
        super().__init__()
        self.viewer = QtViewer(self, analysis_defaults, labelling=True)
        self.model = self.viewer.model
        self.view = self.viewer.view
        self.model.slide.ask_scale = lambda opened: self.ask_mpp(opened)
        self.model.analysis.auto_analyse = str(cfg.get("auto_analyse", "true")).lower() == "true"
        self.setWindowTitle("CellView")
        self.setAcceptDrops(True)
        self.resize(1600, 1000)

        self.view.clicked.connect(self._view_clicked)
        self.view.empty_hint.openRequested.connect(self.choose_slide)
        self.view.empty_hint.recentRequested.connect(self.open_path)
        self.canvas = QWidget()  # the domain banner above the slide
        canvas = QVBoxLayout(self.canvas)
        canvas.setContentsMargins(0, 0, 0, 0)
        canvas.setSpacing(0)
        canvas.addWidget(self.viewer.heatmap.domain_banner)
        canvas.addWidget(self.view, 1)
        self.setCentralWidget(self.canvas)

        self.model_panel = ModelPanel(self.model, self)
        self.run_controls = RunControls(self.model, self.viewer.run_status)
        self.colours = ColourControls(self.model, self.viewer.painter.lut)
        self.tissue_panel = TissuePanel(self.model, self.view)
        self.tissue_panel.shown.connect(self.viewer.tissueShown)
        self.side = SidePanel(self)
        self.exports = ExportActions(self)
        self.menus = MainMenus(self)
        self.status = StatusLine(self.model, self.statusBar())
        self.viewer.canvas.message.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        self.labels, self.labels_panel = install_labels(self, self.side.layout, self.side.labels_at)

        self.model.events.error.connect(lambda e: self.show_error(e.value[1], e.value[0]))
        self.model_panel.refresh_models()
        self.viewer.canvas.show_recent()
        for part in (self.model_panel, self.run_controls, self.menus):
            part.sync()

    # -- state the tests, benchmarks and scripts read -------------------------------------------

    @property
    def opened(self) -> Opened | None:
        return self.model.slide.opened

    @property
    def result(self) -> AnalysisResult | None:
        return self.model.analysis.result

    @property
    def use_cache(self) -> bool:
        return self.model.analysis.use_cache

    @use_cache.setter
    def use_cache(self, value: bool) -> None:
        self.model.analysis.use_cache = bool(value)

    # ------------------------------------------------------------------------------ what the user does

    def open_path(self, path: str | Path, mpp_um: float | None = None) -> None:
        """Open off the main thread; the open slide stays until the new one has opened (``slideOpened``)."""
        self.model.open(path, mpp_um=mpp_um)

    def choose_slide(self) -> None:
        exts = " ".join(f"*{s}" for s in sorted(SUPPORTED_SUFFIXES))
        name, _ = QFileDialog.getOpenFileName(self, "Open slide or image", self.model.slide.open_dialog_dir(),
                                              f"Slides and images ({exts});;All files (*)")
        self.take_focus()
        if name:
            self.model.slide.remember_open_dir(name)
            self.open_path(name)

    def close_slide(self) -> None:
        self.model.close_slide()

    def add_model(self, path: str | Path) -> bool:
        """Validate an .onnx + sidecar and select it; errors go to a dialog."""
        return self.model_panel.add_model(path)

    def start_analysis(self) -> None:
        self.run_controls.start()

    def cancel_analysis(self) -> None:
        self.run_controls.cancel()

    def select_tile(self, index: int) -> None:
        self.model.selection.select(index)

    def _view_clicked(self, l0_x: float, l0_y: float) -> None:
        self.viewer.canvas.select_at(l0_x, l0_y)
        self.view.setFocus()

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.key() in ARROW_STEPS:
            self.viewer.canvas.step_selection(*ARROW_STEPS[event.key()])
            return
        super().keyPressEvent(event)

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt API
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt API
        urls = event.mimeData().urls()
        if not urls:
            return
        path = urls[0].toLocalFile()
        if path.lower().endswith(".onnx"):
            self.add_model(path)
        else:
            self.open_path(path)

    # ------------------------------------------------------------------------------ asking the user

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.viewer.take_focus_soon()

    def take_focus(self) -> None:
        """This window active with the canvas focused (``QtViewer.take_focus``), at start and after every dialog."""
        self.viewer.take_focus()

    def show_error(self, error: CellviewError, title: str = "CellView") -> None:
        """Message plus technical details; the window stays usable (and keeps the focus afterwards)."""
        self.viewer.errorShown.emit(error.message, error.details)
        box = QMessageBox(QMessageBox.Icon.Warning, title, error.message, QMessageBox.StandardButton.Ok, self)
        if error.details:
            box.setDetailedText(error.details)
        box.finished.connect(lambda _r: self.take_focus())
        box.open()

    def ask_mpp(self, opened: Opened) -> float | str | None:
        dlg = MppDialog(opened.info.name, opened.is_plain_image, self)
        accepted = dlg.exec() == QDialog.DialogCode.Accepted
        self.take_focus()
        return dlg.choice if accepted else None

    def confirm_overwrite(self, path: Path) -> bool:
        answer = QMessageBox.question(self, "Replace file?", f"{path.name} already exists in {path.parent}.\n"
                                      "Do you want to replace it?")
        self.take_focus()
        return answer == QMessageBox.StandardButton.Yes

    def ask_save_path(self, title: str, suggested: Path, filter_text: str) -> Path | None:
        name, _ = QFileDialog.getSaveFileName(self, title, str(suggested), filter_text,
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        self.take_focus()
        return Path(name) if name else None

    def ask_folder(self, title: str, suggested: Path) -> Path | None:
        name = QFileDialog.getExistingDirectory(self, title, str(suggested))
        self.take_focus()
        return Path(name) if name else None

    # ------------------------------------------------------------------------------ closing

    def shutdown(self, timeout_ms: int = 15000) -> bool:
        """Stop every worker (analysis first) and wait for their threads; True if all stopped."""
        return self.viewer.shutdown(timeout_ms)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)
