"""`cellview --kiosk`: the viewer as an unattended, full-screen, touch-first station, composed of parts.

The shared ``QtViewer`` (the canvas, the heatmap controls, the analysis status and the tile inspector over the
desktop's own ``ViewerModel``) laid out for touch on the case page, beside the kiosk's headline (``call``);
the header and message cards (``top``), the preparing and waiting pages (``pages``), the cases controller
(``cases``: watch folder, queue, recent cases), the idle screen (``idle``), the exit chord and PIN (``exit``)
and the touch sheets (``touch``). It is not a subclass of the desktop window and imports nothing of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtWidgets import QApplication, QMainWindow, QStackedWidget, QVBoxLayout, QWidget

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.results import AnalysisParams, AnalysisResult
from cellview.base.errors import CellviewError
from cellview.gui.kiosk.case_page import CasePage
from cellview.gui.kiosk.cases import Cases
from cellview.gui.kiosk.exit import ExitGuard
from cellview.gui.kiosk.idle import IdleScreen
from cellview.gui.kiosk.pages import PreparingPage, WaitingPage
from cellview.gui.kiosk.style import KIOSK_SCALE_BAR_PT, KIOSK_STYLESHEET, kiosk_scale, kiosk_stylesheet
from cellview.gui.kiosk.top import Header, MessageCards
from cellview.gui.kiosk.touch import FilePickerSheet, ScaleSheet
from cellview.gui.panels.model import default_model_path
from cellview.gui.qt_viewer import QtViewer
from cellview.gui.widgets.cards import text_label
from cellview.viewer.analysis_settings import ModelOptions
from cellview.viewer.kiosk.cases import CaseResult, load_classifier
from cellview.viewer.kiosk.settings import KioskSettings
from cellview.viewer.slide import Opened

log = logging.getLogger(__name__)


def analysis_defaults(settings: KioskSettings) -> AnalysisParams:
    """The viewer's analysis settings from the kiosk's (each case is run with ``settings.analysis_params``)."""
    return AnalysisParams(tissue_threshold=settings.tissue_threshold, mpp_um=settings.mpp_um, device=settings.device,
                          workers=settings.workers, stain_normalize=settings.stain_normalize, tta=settings.tta,
                          precision=settings.precision)


class KioskWindow(QMainWindow):
    """Full-screen, frameless viewer driven by a watch folder; only the exit chord (and PIN) closes it.

    Pages: "preparing" (the model is loading), "waiting" (watch-folder status, recent cases) and
    "case" (the slide with its streaming overlay and the touch controls). Errors appear as a
    card and never as a modal dialog; an idle screen covers everything after ``idle_s``.
    ``settings_problems`` (what the lenient settings loader dropped from ``settings_file``) stay
    on a card outside the case page until a restart; ``exit_locked`` makes the chord refuse to
    exit (a PIN was lost).
    Call :meth:`start` after construction (tests connect signals first).
    """

    pageChanged = Signal(str)
    modelReady = Signal(object)  # OnnxClassifier
    caseStarted = Signal(object)  # Path
    caseFinished = Signal(object)  # CaseResult, once its worker has stopped
    idleChanged = Signal(bool)
    exitAllowed = Signal()
    exitRefused = Signal()

    def __init__(self, settings: KioskSettings,
                 classifier_loader: Callable[[KioskSettings], OnnxClassifier] = load_classifier,
                 settings_problems: Sequence[CellviewError] = (), exit_locked: bool = False,
                 settings_file: Path | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.settings_problems = tuple(settings_problems)
        self.exit_locked = exit_locked
        self.settings_file = settings_file
        self.viewer = QtViewer(self, analysis_defaults(settings))
        self.exit_guard = ExitGuard(self, settings.exit_chord)
        self.model = self.viewer.model
        self.view = self.viewer.view
        self.model.analysis.use_cache = False
        self.model.slide.ask_scale = None  # nobody may be at the screen: the settings' mpp_um applies or the case fails
        self.model.analysis.auto_analyse = False  # cases are started by the kiosk itself
        self.model.events.error.connect(lambda e: self.show_error(e.value[1], e.value[0]))
        self.resize(1600, 1000)
        self.setWindowFlags(Qt.WindowType.Window | Qt.WindowType.FramelessWindowHint
                            | Qt.WindowType.WindowStaysOnTopHint)
        self.setWindowTitle("CellView kiosk")
        self.menuBar().hide()
        self.statusBar().hide()
        self.page = ""
        self.scale_k = 1.0
        self.cases = Cases(self)

        root = QWidget()
        outer = QVBoxLayout(root)
        outer.setContentsMargins(20, 14, 20, 14)
        outer.setSpacing(12)
        self.header = Header()
        outer.addLayout(self.header.layout)
        self.cards = MessageCards(self)
        self.cards.add_to(outer)
        self.cards.show_settings_problems(settings_file, self.settings_problems, exit_locked)
        self.preparing = PreparingPage(self.viewer.runner, classifier_loader)
        self.waiting = WaitingPage(settings.watch_dir)
        self.case_page = CasePage(self.viewer)
        self.stack = QStackedWidget()
        self.pages: dict[str, QWidget] = {"preparing": self.preparing, "waiting": self.waiting, "case": self.case_page}
        for page in self.pages.values():
            self.stack.addWidget(page)
        outer.addWidget(self.stack, 1)
        notice = text_label("Research use only — not for clinical diagnosis.", "kioskHint", wrap=False)
        notice.setAlignment(Qt.AlignmentFlag.AlignCenter)
        outer.addWidget(notice)
        self.setCentralWidget(root)
        self.idle_screen = IdleScreen(self)
        self.file_sheet = FilePickerSheet(self)
        self.scale_sheet = ScaleSheet(self)
        self.cases.show_recent()
        self.setStyleSheet(KIOSK_STYLESHEET)
        self.viewer.inspector.set_hint("Tap a tile on the slide to see its call.")  # a touch screen has no arrow keys
        self._connect_parts()
        self.model.set_model(default_model_path())  # the viewer's model choice, as the desktop starts with

    def _connect_parts(self) -> None:
        self.preparing.ready.connect(self._on_model)
        self.preparing.failed.connect(lambda exc: self.show_message(f"Model {self.settings.model}: {exc.message}"))
        self.preparing.retryRequested.connect(self.load_model)
        self.waiting.openRequested.connect(self.choose_case)
        self.waiting.caseChosen.connect(self.open_case)
        self.case_page.homeRequested.connect(lambda: self.set_page("waiting"))
        self.case_page.openRequested.connect(self.choose_case)
        self.case_page.analyseRequested.connect(self.cases.analyse_current)
        self.view.clicked.connect(self.case_page.tap)
        self.file_sheet.chosen.connect(self.enqueue)
        self.file_sheet.closed.connect(self.take_focus)
        self.scale_sheet.chosen.connect(self.cases.analyse_with_scale)
        self.scale_sheet.closed.connect(self.take_focus)
        self.cases.started.connect(self.caseStarted)
        self.cases.finished.connect(self.caseFinished)
        self.idle_screen.changed.connect(self.idleChanged)
        self.exit_guard.refused.connect(self.exitRefused)
        self.cases.connect_model()

    # -- state the tests and scripts read -------------------------------------------------------

    @property
    def classifier(self) -> OnnxClassifier | None:
        return self.cases.classifier

    @property
    def idle(self) -> bool:
        return self.idle_screen.active

    @property
    def opened(self) -> Opened | None:
        return self.model.slide.opened

    @property
    def result(self) -> AnalysisResult | None:
        return self.model.analysis.result

    def select_tile(self, index: int) -> None:
        self.model.selection.select(index)

    # ------------------------------------------------------------------------------ start, pages

    def start(self) -> None:
        """Go full-screen, start watching and prepare the model."""
        self._fill_screen()
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(self.idle_screen.activity)
        if self.settings.watch_dir is not None:
            self.cases.start_watching()
        self.idle_screen.note_activity()
        self.load_model()

    def _fill_screen(self) -> None:
        """Full screen, also where no window manager honours the full-screen request (bare X kiosk). The text is
        scaled for the screen first: at the full size an 800 × 480 window could not be made that short."""
        screen = self.screen() or QApplication.primaryScreen()
        if screen is not None:
            self.apply_scale(kiosk_scale(screen.geometry().height()))
        self.showFullScreen()
        if screen is not None and self.geometry() != screen.geometry():
            self.setGeometry(screen.geometry())

    def set_page(self, name: str) -> None:
        self.stack.setCurrentWidget(self.pages[name])
        # The case page needs the room for the slide; the problem is back on the page after it.
        self.cards.settings_card.setVisible(bool(self.settings_problems) and name != "case")
        if name != self.page:
            self.page = name
            self.pageChanged.emit(name)
        self.update_state()

    def show_case_page(self) -> None:
        self.case_page.show_top()
        self.set_page("case")

    def update_state(self) -> None:
        """The header's one line: what the station is doing."""
        cases = self.cases
        if cases.current is not None:
            text = f"Analysing {cases.current.name}"
        elif cases.classifier is None:
            text = "Preparing model"
        elif cases.watcher is not None:
            text = "Watching for slides"
        else:
            text = "Ready"
        if cases.queue:
            text += f" · {len(cases.queue)} waiting"
        self.header.state_label.setText(text)

    # ------------------------------------------------------------------------------ the model

    def load_model(self) -> None:
        """Prepare the classifier on a worker; the preparing page says so instead of freezing."""
        if self.preparing.load(self.settings):
            self.set_page("preparing")

    def _on_model(self, classifier: OnnxClassifier) -> None:
        self.cases.classifier = classifier
        self.model.analysis.spec = classifier.spec
        self.model.explain.classifier = classifier  # activation maps from the loaded model, no second copy
        self.viewer.inspector.set_class_names(classifier.spec.class_names)
        self.header.show_provider(classifier)
        where = f"{self.settings_file}: " if self.settings_file is not None else ""
        self.settings, dropped = self.settings.for_model(classifier.spec, where)
        if dropped:
            for problem in dropped:
                log.warning("%s", problem.message)
            self.settings_problems += dropped
            self.cards.show_settings_problems(self.settings_file, self.settings_problems, self.exit_locked)
        self.model.settings.set_model_options(ModelOptions.from_spec(classifier.spec))  # the viewer's settings follow
        self.waiting.show_run_options(classifier, self.settings)
        self.modelReady.emit(classifier)
        self.set_page("waiting")
        self.cases.next_case()

    # ------------------------------------------------------------------------------ cases

    def enqueue(self, path: str | Path) -> None:
        """Analyse ``path`` (and export it to the outbox) once the model is ready and earlier cases are done."""
        self.cases.enqueue(path)

    def open_case(self, case: CaseResult) -> None:
        """Show a past case: its result from this session, else re-analysed (from the result cache when it can)."""
        self.cases.open_case(case)

    def choose_case(self) -> None:
        """A finger-sized file picker inside the window (``touch.FilePickerSheet``): a dialog of its own could
        be wider than the screen or open behind the kiosk (no window manager places it)."""
        self.file_sheet.open_at(self.settings.watch_dir or Path.home())

    # ------------------------------------------------------------------------------ messages

    def show_message(self, message: str) -> None:
        """An error card that stays a few seconds; it never blocks and never needs an answer."""
        self.idle_screen.hide_idle()
        self.cards.show_message(message)

    def show_info(self, message: str) -> None:
        self.cards.show_info(message)

    def show_error(self, error: CellviewError, title: str = "CellView") -> None:
        """Viewer errors (a slide that will not open, an unreadable region) as a card, never a dialog."""
        self.viewer.errorShown.emit(error.message, error.details)
        self.show_message(error.message)
        if self.cases.current is None and self.page == "case" and self.opened is None:
            self.set_page("waiting")

    # ------------------------------------------------------------------------------ the screen

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.viewer.take_focus_soon()

    def take_focus(self) -> None:
        self.viewer.take_focus()

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt API
        if not self.viewer.canvas.step_key(event.key()):
            super().keyPressEvent(event)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self.idle_screen.setGeometry(self.rect())
        for sheet in (self.file_sheet, self.scale_sheet):
            sheet.fit()
        k = kiosk_scale(self.height())
        self.apply_scale(k)
        QTimer.singleShot(0, self.waiting.fit_recent_items)  # after the list has its new width
        self.case_page.fit(self.width(), self.height(), k)

    def apply_scale(self, k: float) -> None:
        """A shorter screen: smaller text and targets (``style.kiosk_scale``; the layout follows the style sheet)."""
        if k != self.scale_k:
            self.scale_k = k
            self.setStyleSheet(kiosk_stylesheet(k))
            self.view.scale_bar.set_font_pt(KIOSK_SCALE_BAR_PT * k)

    # ------------------------------------------------------------------------------ staying up, exiting

    def request_exit(self) -> None:
        """The exit chord (``exit.ExitGuard``)."""
        self.exit_guard.request()

    def exit_kiosk(self) -> None:
        """Really close: stop the workers, then the window (the application ends with it)."""
        self.exit_guard.allow()
        self.exitAllowed.emit()
        self.close()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if not self.exit_guard.allowed:
            event.ignore()  # Alt+F4, a window manager, a stray close(): only the exit chord leaves
            return
        self.cases.poll_timer.stop()
        self.idle_screen.timer.stop()
        app = QApplication.instance()
        if app is not None:
            app.removeEventFilter(self.idle_screen.activity)
        self.viewer.shutdown()
        super().closeEvent(event)

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().changeEvent(event)
        if event.type() == QEvent.Type.WindowStateChange and not self.exit_guard.allowed and not self.isFullScreen():
            QTimer.singleShot(0, self._reassert_full_screen)

    def _reassert_full_screen(self) -> None:
        if not self.exit_guard.allowed and not self.isFullScreen():
            self._fill_screen()
