"""The desktop viewer's main window, composed of parts: the shared ``QtViewer`` (canvas, heatmap, analysis
status, inspector over one ``ViewerModel``), the desktop's own panels (model, run options, colours, tissue
mask), the side panel that lays them out as cards, the menus, the status bar, the exports and the labelling
tools. The window itself only holds them together and answers what a part asks of the user (an error, a
pixel size, where to save, whether to replace a file).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QMargins, QRect, QTimer
from PySide6.QtWidgets import QApplication, QDialog, QFileDialog, QMainWindow, QMessageBox, QVBoxLayout, QWidget

from cellview.analysis.results import AnalysisParams, AnalysisResult
from cellview.base.errors import CellviewError
from cellview.gui import settings as cfg
from cellview.gui.desktop.dialogs import MppDialog
from cellview.gui.desktop.exports import ExportActions
from cellview.gui.desktop.labels import install_labels
from cellview.gui.desktop.menus import MainMenus
from cellview.gui.desktop.side_panel import SidePanel
from cellview.gui.desktop.status import StatusLine
from cellview.gui.panels.call import CallPanel
from cellview.gui.panels.heatmap import ColourControls
from cellview.gui.panels.model import ModelPanel
from cellview.gui.panels.run_controls import RunControls
from cellview.gui.panels.tissue import TissuePanel
from cellview.gui.qt_viewer import QtViewer
from cellview.slides.slide import SUPPORTED_SUFFIXES
from cellview.viewer.slide import Opened

PREFERRED_SIZE = (1600, 1000)
"""The window's size where the screen has room for it."""


def fitted_geometry(available: QRect, frame: QMargins | None = None) -> QRect:
    """Where the window opens: ``PREFERRED_SIZE`` centred on the screen's ``available`` area, or all of it on a
    smaller screen (at a fixed 1600 × 1000 a 1366 × 768 screen lost the side panel, status bar and scale bar).
    ``frame``: the window manager's title bar and borders, once known."""
    f = frame or QMargins()
    room_w = available.width() - f.left() - f.right()
    room_h = available.height() - f.top() - f.bottom()
    w, h = min(PREFERRED_SIZE[0], room_w), min(PREFERRED_SIZE[1], room_h)
    return QRect(available.x() + f.left() + (room_w - w) // 2, available.y() + f.top() + (room_h - h) // 2, w, h)


LAST_MPP_KEY = "last_mpp_um"
DEFAULT_MPP_UM = 0.5
"""The pixel size first proposed for a slide that does not say (a typical 20× scan); then the last one entered."""


class MainWindow(QMainWindow):
    """The viewer: ``viewer`` (the shared parts and their signals), ``model`` (its ``ViewerModel``) and ``view``
    (the slide) in the middle; ``model_panel``, ``run_controls``, ``colours``, ``tissue_panel`` and ``labels_panel``
    in ``side`` (the dock), with ``call_panel`` (the slide's call) in its Analysis card; ``menus``, ``status`` and
    ``exports``."""

    def __init__(self, analysis_defaults: AnalysisParams | None = None) -> None:
        super().__init__()
        self.viewer = QtViewer(self, analysis_defaults, labelling=True)
        self.model = self.viewer.model
        self.view = self.viewer.view
        self.model.slide.ask_scale = lambda opened: self.ask_mpp(opened)
        self.model.analysis.auto_analyse = str(cfg.get("auto_analyse", "true")).lower() == "true"
        self.setWindowTitle("CellView")
        self.setAcceptDrops(True)
        self._fitted = False
        self._fitted_size = QRect()
        self.fit_to_screen()

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
        self.call_panel = CallPanel(self.model)
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
        if not self.viewer.canvas.step_key(event.key()):
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

    def fit_to_screen(self) -> None:
        """The window on its screen's available area (``fitted_geometry``), with the window manager's frame."""
        screen = self.screen() or QApplication.primaryScreen()
        if screen is None:
            return
        frame = self.frameGeometry()
        inner = self.geometry()
        margins = QMargins(inner.left() - frame.left(), inner.top() - frame.top(), frame.right() - inner.right(),
                           frame.bottom() - inner.bottom())
        self._fitted_size = fitted_geometry(screen.availableGeometry(), margins)
        self.setGeometry(self._fitted_size)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self._fitted:  # once shown, the window manager's frame is known: fit it on the screen again
            self._fitted = True
            QTimer.singleShot(0, self._refit)
        self.viewer.take_focus_soon()

    def _refit(self) -> None:
        """The frame pushed the window off its screen: fit again (unless someone sized it since: a script, a test)."""
        screen = self.screen() or QApplication.primaryScreen()
        if (screen is not None and self.size() == self._fitted_size.size()
                and not screen.availableGeometry().contains(self.frameGeometry())):
            self.fit_to_screen()

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
        """The pixel size of a slide that does not say, proposing the last one entered (a series shares it)."""
        try:
            last = float(cfg.get(LAST_MPP_KEY, "") or DEFAULT_MPP_UM)
        except ValueError:
            last = DEFAULT_MPP_UM
        dlg = MppDialog(opened.info.name, opened.is_plain_image, self, value=last)
        accepted = dlg.exec() == QDialog.DialogCode.Accepted
        self.take_focus()
        if accepted and isinstance(dlg.choice, float):
            cfg.put(LAST_MPP_KEY, f"{dlg.choice:g}")
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
