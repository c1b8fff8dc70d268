"""`cellview --kiosk`: the viewer as an unattended, full-screen, touch-first station.

The behaviour that must hold without an operator (half-copied files are never opened, a bad
file never stops the station, the outbox never overwrites a case) lives in the Qt-free
``cellview.viewer.kiosk`` package; this module wires it to widgets and timers. The viewer state is the
desktop's own ``ViewerModel``: a case is ``model.open(path, analyse=True, source=…)`` with the
kiosk's preloaded classifier as the source (``kiosk.cases.iter_case``: analyse, then export to the
outbox), so the overlay streams exactly as on the desktop and no run set-up is repeated here.
Model preparation (minutes on a first TensorRT start) runs on a ``Worker`` behind a screen.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QPoint, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QPainter, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QBoxLayout,
    QDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QScroller,
    QSizePolicy,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from cellview.analysis.cache import ResultCache
from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import CATEGORY_COLORS, PRECISION_LABELS
from cellview.analysis.pipeline import CancelToken, analyze
from cellview.analysis.results import AnalysisParams, AnalysisResult, plural
from cellview.base.errors import CellviewError
from cellview.gui.mainwindow import MainWindow, WheelGuard, format_eta
from cellview.gui.qtapp import make_app
from cellview.gui.touch import FilePickerSheet, ScaleSheet, TileSheet
from cellview.gui.touch import text_label as _label
from cellview.gui.worker import Worker
from cellview.outputs.legend import STAIN_LABELS, TTA_LABELS
from cellview.slides.slide import slide_display_name
from cellview.viewer.analysis import AnalysisRequest
from cellview.viewer.analysis_settings import ModelOptions
from cellview.viewer.events import Event
from cellview.viewer.kiosk.cases import CaseResult, RecentCases, analysed_in_outbox, iter_case, load_classifier
from cellview.viewer.kiosk.settings import KioskSettings, SalvagedSettings
from cellview.viewer.kiosk.watch import WatchFolder

log = logging.getLogger(__name__)

ERROR_CARD_S = 12.0
"""How long an error stays on screen before the kiosk is back to its plain waiting view."""

MAX_PIN_TRIES = 3

MAX_SETTINGS_PROBLEMS_SHOWN = 5
"""More problems than this are counted on screen, not listed (they are all in the journal)."""

EXIT_LOCKED_MESSAGE = ("Leaving the kiosk is disabled: the PIN in the kiosk settings file cannot be used. "
                       "Fix the settings file, then restart the kiosk service.")

# Readable from a metre away and hittable with a finger: ≥ 20 pt text, ≥ 64 px targets on a 600-px-high
# screen; "@" sizes shrink with shorter screens (``kiosk_stylesheet``), to 80 % on an 800 × 480 one.
KIOSK_STYLESHEET_TEMPLATE = """
QWidget { font-size: @20pt; }
QLabel#kioskTitle { font-size: @26pt; font-weight: 700; color: #e6e9ec; }
QLabel#kioskHeadline { font-size: @34pt; font-weight: 700; color: #e6e9ec; }
QLabel#kioskHint, QLabel#hint { font-size: @20pt; color: #aab2b9; }
QLabel#kioskProvider { font-size: @20pt; color: #9fd3a0; }
QLabel#kioskProvider[warn="true"] { color: #ffb347; }
QFrame#kioskBanner { background: #5a4316; border-radius: @8px; }
QFrame#kioskError { background: #6b1f24; border: 2px solid #c2414b; border-radius: @10px; }
QFrame#kioskDone { background: #1d4a2c; border: 2px solid #3d9a5b; border-radius: @10px; }
QFrame#kioskIdle { background: #101214; }
QFrame#kioskSettings { background: #4a3510; border: 2px solid #ffb347; border-radius: @10px; }
QLabel#kioskSettingsTitle { font-size: @24pt; font-weight: 700; color: #ffd08a; }
QPushButton { min-height: @64px; min-width: @64px; padding: @8px @24px; font-size: @22pt; border-radius: @10px; }
QPushButton#pinKey { min-width: @110px; min-height: @96px; font-size: @30pt; }
QCheckBox { min-height: @64px; spacing: @18px; font-size: @20pt; }
QCheckBox::indicator { width: @40px; height: @40px; }
QSlider { min-height: @64px; }
QSlider::groove:horizontal { height: @14px; background: #3a4147; border-radius: @7px; }
QSlider::sub-page:horizontal { background: #2f6fb3; border-radius: @7px; }
QSlider::handle:horizontal { width: @52px; height: @52px; margin: -@19px 0; border-radius: @26px; background: #e6e9ec; }
QListWidget { background: #1b1e21; border: 1px solid #3d4348; border-radius: @8px; font-size: @20pt; }
QListWidget::item { min-height: @80px; padding: @8px @14px; border-bottom: 1px solid #2a2f33; }
QListWidget::item:selected { background: #2f6fb3; }
QProgressBar { min-height: @40px; font-size: @18pt; }
QLineEdit { min-height: @72px; font-size: @30pt; }
QScrollBar:vertical { width: @40px; }
QComboBox { min-height: @64px; font-size: @20pt; padding: @4px @12px; }
QLabel#kioskCall { font-size: @30pt; font-weight: 700; }
QLabel#kioskShares { font-size: @20pt; color: #c3c9ce; }
QLabel#inspectorTitle { font-size: @24pt; font-weight: 700; }
QLabel#inspectorSubtitle { font-size: @20pt; color: #aab2b9; }
QLabel#inspectorDetails { font-size: @18pt; color: #c3c9ce; font-family: 'DejaVu Sans Mono', monospace; }
QLabel#categoryCount { font-size: @20pt; color: #c3c9ce; }
QLabel#levelsWarning { font-size: @20pt; color: #ffb347; }
QFrame#domainBanner { background: #5a4316; border: 2px solid #ffb347; border-radius: @10px; }
QFrame#domainNote { background: #2a2f33; border: 1px solid #4a5259; border-radius: @10px; }
QFrame#filterNotice { background: #5a4316; border: 2px solid #ffb347; border-radius: @10px; }
QLabel#filterNoticeText { font-size: @20pt; color: #f3ead8; }
QLabel#domainBannerText { font-size: @20pt; color: #f3ead8; }
QFrame#kioskInfo { background: #23384d; border: 2px solid #3a7fc6; border-radius: @10px; }
QFrame#kioskSheetBackdrop { background: rgba(0, 0, 0, 160); }
QFrame#kioskSheet { background: #1f2326; border: 2px solid #4a5259; border-radius: @12px; }
QFrame#kioskTileSheet { background: rgba(27, 30, 33, 238); border: 2px solid #4a5259; border-radius: @12px; }
QListWidget#kioskFiles::item { min-height: @64px; }
QFrame#kioskTileSheet QLabel, QFrame#kioskTileSheet QWidget { font-size: @17pt; }
QFrame#kioskTileSheet QLabel#tileSheetTitle { font-size: @22pt; font-weight: 700; }
QFrame#kioskTileSheet QLabel#tileSheetSubtitle { color: #c3c9ce; }
"""


def kiosk_scale(height: int) -> float:
    """How much smaller the kiosk's text and targets are on a screen this high: 1 at 600 px and more (the
    Jetson's 1024 × 600 display), 0.8 at 480 px (16 pt text, 51-px targets: still readable from a metre and
    larger than a fingertip). The panel's width is shared out separately (``resizeEvent``)."""
    return max(0.8, min(1.0, height / 600))


def kiosk_stylesheet(k: float = 1.0) -> str:
    """The kiosk's style sheet with every "@" size scaled by ``k`` (``kiosk_scale``)."""
    return re.sub(r"@(\d+(?:\.\d+)?)(pt|px)", lambda m: f"{round(float(m[1]) * k, 1):g}{m[2]}",
                  KIOSK_STYLESHEET_TEMPLATE)


KIOSK_STYLESHEET = kiosk_stylesheet(1.0)

KIOSK_SCALE_BAR_PT = 18.0
"""The scale bar's label in the kiosk, read from a metre away like every other text."""

KIOSK_OVERVIEW_SHARE = 0.18
"""The overview's largest share of the slide view's shorter side (it covered ~40% at 1024 × 600)."""

_ACTIVITY_EVENTS = {
    QEvent.Type.MouseButtonPress, QEvent.Type.MouseButtonRelease, QEvent.Type.MouseMove, QEvent.Type.KeyPress,
    QEvent.Type.TouchBegin, QEvent.Type.TouchUpdate, QEvent.Type.Wheel, QEvent.Type.TabletPress,
}


def _take_from_layout(layout: QLayout, widget: QWidget) -> bool:
    """Remove ``widget`` from ``layout`` or one of its nested layouts (so it can be re-laid out quietly)."""
    for i in range(layout.count()):
        item = layout.itemAt(i)
        if item.widget() is widget:
            layout.takeAt(i)
            return True
        if item.layout() is not None and _take_from_layout(item.layout(), widget):
            return True
    return False


def _adopt(widget: QWidget) -> QWidget:
    """Detach a widget from the desktop panel's layout so the kiosk panel can place it."""
    parent = widget.parentWidget()
    if parent is not None and parent.layout() is not None:
        _take_from_layout(parent.layout(), widget)
    return widget


class ElidedLabel(QLabel):
    """One line that ends in "…" when it does not fit, instead of wrapping (the header) or being clipped."""

    def __init__(self, text: str = "", name: str = "") -> None:
        super().__init__(text)
        if name:
            self.setObjectName(name)
        self.setWordWrap(False)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(40)

    def shown_text(self) -> str:
        return self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, max(10, self.contentsRect().width()))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(40, super().minimumSizeHint().height())

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setPen(self.palette().windowText().color())
        p.setFont(self.font())
        p.drawText(self.contentsRect(), int(self.alignment() | Qt.AlignmentFlag.AlignVCenter), self.shown_text())
        p.end()


def _card(name: str) -> tuple[QFrame, QLabel]:
    """A hidden, styled frame (by object name) holding one wrapped label."""
    frame = QFrame()
    frame.setObjectName(name)
    label = _label("")
    QHBoxLayout(frame).addWidget(label, 1)
    frame.hide()
    return frame, label


class _TextScroll(QScrollArea):
    """A wrapped label that asks for the height its text needs (a third of the screen at most) but
    can shrink to one line and scroll: other cards may appear later (an error, an unreachable
    watch folder), and the window must never grow taller than the screen (it would leave full screen).
    """

    def __init__(self, label: QLabel) -> None:
        super().__init__()
        self.setWidget(label)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.setStyleSheet("QScrollArea, QScrollArea > QWidget > QWidget { background: transparent; }")
        QScroller.grabGesture(self.viewport(), QScroller.ScrollerGestureType.LeftMouseButtonGesture)

    def _screen_size(self) -> QSize:
        screen = self.screen() or QApplication.primaryScreen()
        return screen.geometry().size() if screen is not None else QSize(1280, 800)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        # From the screen, not this widget, whose width lags while it is being laid out. 90 px covers
        # the page and card margins, generously (narrower wraps to more lines, so no text is cut).
        size = self._screen_size()
        needed_px = self.widget().heightForWidth(max(100, size.width() - 90))
        return QSize(super().sizeHint().width(), min(needed_px, size.height() // 3))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(super().minimumSizeHint().width(), self.widget().fontMetrics().lineSpacing())


class PinPad(QDialog):
    """A finger-sized digit pad; ``entered`` carries the digits when OK is pressed."""

    entered = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowFlags(Qt.WindowType.Dialog | Qt.WindowType.FramelessWindowHint
                            | Qt.WindowType.WindowStaysOnTopHint)
        self.setModal(True)
        # side by side (a landscape screen is short): the prompt, field and Cancel, then the digit pad
        lay = QHBoxLayout(self)
        lay.setContentsMargins(24, 18, 24, 18)
        lay.setSpacing(24)
        left = QVBoxLayout()
        left.addWidget(_label("Enter the PIN to leave kiosk mode", "kioskTitle"))
        self.field = QLineEdit()
        self.field.setEchoMode(QLineEdit.EchoMode.Password)
        self.field.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.field.returnPressed.connect(self.submit)
        left.addWidget(self.field)
        self.message = _label("", "kioskHint")
        left.addWidget(self.message)
        left.addStretch(1)
        lay.addLayout(left, 1)
        grid = QGridLayout()
        self.keys: dict[str, QPushButton] = {}
        for i, key in enumerate(["1", "2", "3", "4", "5", "6", "7", "8", "9", "⌫", "0", "OK"]):
            btn = QPushButton(key)
            btn.setObjectName("pinKey")
            btn.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            btn.clicked.connect(lambda _c=False, k=key: self.press(k))
            grid.addWidget(btn, i // 3, i % 3)
            self.keys[key] = btn
        lay.addLayout(grid)
        cancel = QPushButton("Cancel")
        cancel.clicked.connect(self.reject)
        left.addWidget(cancel)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        fit_inside(self, self.parentWidget())

    def press(self, key: str) -> None:
        if key == "OK":
            self.submit()
        elif key == "⌫":
            self.field.setText(self.field.text()[:-1])
        else:
            self.field.setText(self.field.text() + key)

    def submit(self) -> None:
        self.entered.emit(self.field.text())

    def wrong(self, tries_left: int) -> None:
        self.field.clear()
        self.message.setText(f"Wrong PIN. {tries_left} {'try' if tries_left == 1 else 'tries'} left.")


def fit_inside(dialog: QWidget, host: QWidget | None) -> None:
    """Centre a dialog on its host window, never larger than it (no window manager places it)."""
    if host is None:
        return
    size = dialog.sizeHint().boundedTo(host.size() - QSize(16, 16))
    dialog.resize(size)
    centre = host.mapToGlobal(host.rect().center())
    dialog.move(centre.x() - size.width() // 2, centre.y() - size.height() // 2)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


class _ActivityFilter(QObject):
    """App-wide: any touch, click or key press counts as someone being at the screen."""

    def __init__(self, on_activity: Callable[[], None]) -> None:
        super().__init__()
        self._on_activity = on_activity

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() in _ACTIVITY_EVENTS:
            self._on_activity()
        return False


class KioskWindow(MainWindow):
    """Full-screen, frameless viewer driven by a watch folder; only the exit chord (and PIN) closes it.

    Pages: "preparing" (the model is loading), "waiting" (watch-folder status, recent cases) and
    "case" (the slide with its streaming overlay and the touch controls). Errors appear as a
    card and never as a modal dialog; an idle screen covers everything after ``idle_s``.
    ``settings_problems`` (what the lenient settings loader dropped from ``settings_file``) stay
    on a card outside the case page until a restart; ``exit_locked`` makes the chord refuse to
    exit (a PIN was lost).
    Call :meth:`start` after construction (tests connect signals first).
    """

    LABELLING = False
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
        self.settings = settings
        self._loader = classifier_loader
        self._exit_allowed = False
        self.settings_problems = tuple(settings_problems)
        self.exit_locked = exit_locked
        self.settings_file = settings_file
        super().__init__(analysis_defaults=AnalysisParams(
            tissue_threshold=settings.tissue_threshold, mpp_um=settings.mpp_um, device=settings.device,
            workers=settings.workers, stain_normalize=settings.stain_normalize, tta=settings.tta,
            precision=settings.precision))
        self.use_cache = False
        self.model.slide.ask_scale = None  # nobody may be at the screen: the settings' mpp_um applies or the case fails
        self.model.analysis.auto_analyse = False  # cases are started by the kiosk itself
        self.setWindowFlags(Qt.WindowType.Window | Qt.WindowType.FramelessWindowHint
                            | Qt.WindowType.WindowStaysOnTopHint)
        self.setWindowTitle("CellView kiosk")
        self.setAcceptDrops(False)
        self.menuBar().hide()
        self.statusBar().hide()
        self.dock.hide()
        # The desktop setting must not be written by the kiosk; cases are started by the kiosk itself.
        self.auto_box.blockSignals(True)
        self.auto_box.setChecked(False)
        self.auto_box.blockSignals(False)

        self.classifier: OnnxClassifier | None = None
        self.recent = RecentCases.for_settings(settings)
        self.watcher: WatchFolder | None = None
        self.queue: list[Path] = []
        self.current_case: Path | None = None
        self._case_export = False
        self._last_case: CaseResult | None = None
        self._model_worker: Worker | None = None
        self._results: dict[Path, AnalysisResult] = {}
        self._model_started = 0.0
        self.pin_pad: PinPad | None = None
        self._pin_tries = 0
        self.page = ""
        self.idle = False
        self.scale_k = 1.0
        self.case_mpp: dict[Path, float] = {}
        """µm per pixel chosen on screen for a slide that does not say it (``ScaleSheet``)."""
        self._wake_case: CaseResult | None = None  # finished while the idle screen was up: shown on the next touch
        self._finished_case: CaseResult | None = None  # the last case finished, and when (time.monotonic)
        self._finished_at = 0.0
        self._last_activity = 0.0

        self._build_kiosk_ui()
        self.setStyleSheet(KIOSK_STYLESHEET)
        self.inspector.set_hint("Tap a tile on the slide to see its call.")  # a touch screen has no arrow keys

        self.exit_shortcut = QShortcut(QKeySequence(settings.exit_chord), self)
        self.exit_shortcut.setContext(Qt.ShortcutContext.ApplicationShortcut)
        self.exit_shortcut.activated.connect(self.request_exit)

        self.poll_timer = QTimer(self, interval=max(50, int(settings.poll_s * 1000)))
        self.poll_timer.timeout.connect(self.poll_watch_folder)
        self.idle_timer = QTimer(self, singleShot=True, interval=max(1, int(settings.idle_s * 1000)))
        self.idle_timer.timeout.connect(self.show_idle)
        self.error_timer = QTimer(self, singleShot=True, interval=int(ERROR_CARD_S * 1000))
        self.error_timer.timeout.connect(self.hide_error)
        self.prepare_timer = QTimer(self, interval=1000)
        self.prepare_timer.timeout.connect(self._tick_prepare)
        self._activity = _ActivityFilter(self.note_activity)
        ev = self.model.analysis.events
        ev.job_item.connect(self._on_case_item)
        ev.result.connect(self._on_case_result_shown)
        ev.run_ended.connect(lambda e: self._on_case_done())
        self.model.slide.events.open_failed.connect(self._on_open_failed)

    # ------------------------------------------------------------------------------ layout

    def _build_kiosk_ui(self) -> None:
        view = self.takeCentralWidget()  # the SlideView, kept; setCentralWidget would delete it
        root = QWidget()
        outer = QVBoxLayout(root)
        outer.setContentsMargins(20, 14, 20, 14)
        outer.setSpacing(12)

        top = QHBoxLayout()
        top.addWidget(_label("CellView", "kioskTitle", wrap=False))
        self.state_label = ElidedLabel("", "kioskHint")  # one line: "Analysing CMU-1-Small-Re…"
        top.addWidget(self.state_label, 1)
        self.provider_badge = ElidedLabel("", "kioskProvider")  # "colon-he 2.0.0 on CPU …" never pushes the title off
        self.provider_badge.setAlignment(Qt.AlignmentFlag.AlignRight)
        top.addWidget(self.provider_badge, 1)
        outer.addLayout(top)

        self.banner, self.banner_label = _card("kioskBanner")
        outer.addWidget(self.banner)

        self.info_card, self.info_label = _card("kioskInfo")  # news that is not an error (a backlog at start)
        ok = QPushButton("OK")
        ok.clicked.connect(self.info_card.hide)
        self.info_card.layout().addWidget(ok, 0, Qt.AlignmentFlag.AlignTop)
        outer.addWidget(self.info_card)

        self.error_card, self.error_label = _card("kioskError")
        self.error_label.setTextFormat(Qt.TextFormat.PlainText)
        el = self.error_card.layout()
        el.setContentsMargins(20, 12, 12, 12)
        dismiss = QPushButton("OK")
        dismiss.clicked.connect(self.hide_error)
        el.addWidget(dismiss, 0, Qt.AlignmentFlag.AlignTop)
        outer.addWidget(self.error_card)
        outer.addWidget(self._build_settings_card())

        self.stack = QStackedWidget()
        self.pages: dict[str, QWidget] = {
            "preparing": self._build_preparing_page(),
            "waiting": self._build_waiting_page(),
            "case": self._build_case_page(view),
        }
        for page in self.pages.values():
            self.stack.addWidget(page)
        outer.addWidget(self.stack, 1)
        notice = _label("Research use only — not for clinical diagnosis.", "kioskHint", wrap=False)
        notice.setAlignment(Qt.AlignmentFlag.AlignCenter)
        outer.addWidget(notice)
        self.setCentralWidget(root)

        self.idle_screen = QFrame(self)
        self.idle_screen.setObjectName("kioskIdle")
        il = QVBoxLayout(self.idle_screen)
        il.addStretch(1)
        for text, name in (("CellView", "kioskHeadline"), ("Touch the screen to continue", "kioskHint")):
            lab = _label(text, name)
            lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
            il.addWidget(lab)
        self.idle_status = _label("", "kioskHint")
        self.idle_status.setAlignment(Qt.AlignmentFlag.AlignCenter)
        il.addWidget(self.idle_status)
        il.addStretch(1)
        self.idle_screen.hide()
        self.file_sheet = FilePickerSheet(self)
        self.file_sheet.chosen.connect(self.enqueue)
        self.file_sheet.closed.connect(self._take_focus)
        self.scale_sheet = ScaleSheet(self)
        self.scale_sheet.chosen.connect(self.analyse_with_scale)
        self.scale_sheet.closed.connect(self._take_focus)
        self.tile_sheet = TileSheet(self.view)
        self.tile_sheet.closeRequested.connect(self.hide_tile_sheet)
        self.tile_sheet.detailsRequested.connect(self.show_tile_details)

    def _build_settings_card(self) -> QFrame:
        """The settings loader's problems, shown until the file is fixed and the kiosk restarted.

        Unlike the error card it has no timer and no dismiss button: whoever next looks at the
        screen must learn that the kiosk runs on partly default settings (or cannot be left).
        What to do comes first; the text scrolls where the screen has no room for all of it.
        """
        self.settings_card = QFrame()
        self.settings_card.setObjectName("kioskSettings")
        lay = QVBoxLayout(self.settings_card)
        lay.setContentsMargins(20, 8, 20, 8)
        lay.setSpacing(2)
        lay.addWidget(_label("⚠ Settings problem", "kioskSettingsTitle", wrap=False))
        self.settings_label = _label("")
        self.settings_label.setTextFormat(Qt.TextFormat.PlainText)
        lay.addWidget(_TextScroll(self.settings_label))
        self._show_settings_problems()
        self.settings_card.hide()
        return self.settings_card

    def _show_settings_problems(self) -> None:
        file, problems = self.settings_file, self.settings_problems
        what_to_do = (f"Fix {file if file is not None else 'the kiosk settings file'}, then restart the kiosk "
                      "service. Until then the kiosk runs with the settings that were valid")
        what_to_do += ", and cannot be left: its PIN is unusable." if self.exit_locked else "."
        prefix = f"{file}: " if file is not None else None
        lines = [what_to_do]
        lines += [f"• {p.message.removeprefix(prefix) if prefix else p.message}"
                  for p in problems[:MAX_SETTINGS_PROBLEMS_SHOWN]]
        if len(problems) > MAX_SETTINGS_PROBLEMS_SHOWN:
            lines.append(f"• and {len(problems) - MAX_SETTINGS_PROBLEMS_SHOWN} more (see the kiosk's log)")
        self.settings_label.setText("\n".join(lines))

    def _build_preparing_page(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.addStretch(1)
        self.prepare_title = _label("Preparing model…", "kioskHeadline")
        self.prepare_title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(self.prepare_title)
        self.prepare_bar = QProgressBar()
        self.prepare_bar.setRange(0, 0)  # indeterminate: an engine build reports no progress
        self.prepare_bar.setTextVisible(False)
        lay.addWidget(self.prepare_bar)
        self.prepare_label = _label("", "kioskHint")
        self.prepare_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(self.prepare_label)
        self.retry_btn = QPushButton("Try again")
        self.retry_btn.clicked.connect(self.load_model)
        self.retry_btn.hide()
        lay.addWidget(self.retry_btn, 0, Qt.AlignmentFlag.AlignCenter)
        lay.addStretch(2)
        return page

    def _build_waiting_page(self) -> QWidget:
        page = QWidget()
        lay = QHBoxLayout(page)
        lay.setSpacing(24)
        column = QWidget()
        left = QVBoxLayout(column)
        left.setContentsMargins(0, 0, 0, 0)
        left.addStretch(1)
        self.waiting_title = _label("Waiting for a slide", "kioskHeadline")
        left.addWidget(self.waiting_title)
        watch = self.settings.watch_dir
        self.waiting_hint = _label(
            f"Put a slide or image into\n{watch}\nIt opens and is analysed automatically." if watch is not None
            else "Tap “Open slide” to choose a slide or image.", "kioskHint")
        left.addWidget(self.waiting_hint)
        self.run_options_label = _label("", "kioskHint")  # the analysis settings every case runs with
        self.run_options_label.hide()
        left.addWidget(self.run_options_label)
        self.receiving_label = _label("", "kioskHint")
        self.receiving_label.hide()
        left.addWidget(self.receiving_label)
        self.done_card, self.done_label = _card("kioskDone")
        left.addWidget(self.done_card)
        left.addStretch(2)
        # on a small screen the column scrolls (by finger) rather than squeezing the done card's text;
        # the Open button stays under it, always in view (at 800 × 480 it was scrolled off)
        scroll = QScrollArea()
        scroll.setWidget(column)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setStyleSheet("QScrollArea, QScrollArea > QWidget > QWidget { background: transparent; }")
        QScroller.grabGesture(scroll.viewport(), QScroller.ScrollerGestureType.LeftMouseButtonGesture)
        self.waiting_scroll = scroll
        stack = QVBoxLayout()
        stack.addWidget(scroll, 1)
        row = QHBoxLayout()
        self.open_btn = QPushButton("Open slide…")
        self.open_btn.setObjectName("primary")
        self.open_btn.clicked.connect(self.choose_case)
        row.addWidget(self.open_btn)
        row.addStretch(1)
        stack.addLayout(row)
        lay.addLayout(stack, 3)
        right = QVBoxLayout()
        right.addWidget(_label("Recent cases", "kioskTitle"))
        self.recent_list = QListWidget()
        self.recent_list.setVerticalScrollMode(QListWidget.ScrollMode.ScrollPerPixel)
        self.recent_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.recent_list.setWordWrap(True)  # the call is never cut off: it wraps onto another line
        self.recent_list.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.recent_list.itemClicked.connect(self._recent_clicked)
        QScroller.grabGesture(self.recent_list.viewport(), QScroller.ScrollerGestureType.LeftMouseButtonGesture)
        right.addWidget(self.recent_list, 1)
        lay.addLayout(right, 2)
        self._refresh_recent()
        return page

    def _build_case_page(self, view: QWidget) -> QWidget:
        """The slide, and beside it a touch panel whose top (case, call, shares) fits a 1024 × 600 screen."""
        page = QWidget()
        lay = QHBoxLayout(page)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(16)
        lay.addWidget(view, 1)
        self.view.overview_share = KIOSK_OVERVIEW_SHARE
        self.view.offer_open = False
        self.view.empty_hint.hide()
        self.view.scale_bar.set_font_pt(KIOSK_SCALE_BAR_PT)
        panel = QWidget()
        side = QVBoxLayout(panel)
        side.setContentsMargins(0, 0, 8, 0)
        side.setSpacing(10)
        self.case_title = ElidedLabel("", "kioskTitle")
        side.addWidget(self.case_title)
        self.call_label = _label("", "kioskCall")
        side.addWidget(self.call_label)
        self.shares_label = _label("", "kioskShares")
        side.addWidget(self.shares_label)
        # the domain warning right under the call it qualifies (the slide view is too small for a banner)
        side.addWidget(_adopt(self.domain_banner))
        self.domain_banner.set_stacked(True)
        side.addWidget(_adopt(self.progress))
        side.addWidget(_adopt(self.rate_label))
        self.rate_label.setWordWrap(True)  # "Results saved to /long/outbox/path" must not widen the panel
        buttons = QGridLayout()
        self.home_btn = QPushButton("◀ Cases")
        self.home_btn.clicked.connect(lambda: self.set_page("waiting"))
        self.open_btn2 = QPushButton("Open…")
        self.open_btn2.clicked.connect(self.choose_case)
        self.analyse_btn2 = QPushButton("Analyse")
        self.analyse_btn2.setObjectName("primary")
        self.analyse_btn2.clicked.connect(self.analyse_current)
        self.fit_btn = QPushButton("Fit")
        self.fit_btn.clicked.connect(self.view.fit)
        for i, btn in enumerate((self.home_btn, self.open_btn2, self.analyse_btn2, self.fit_btn)):
            buttons.addWidget(btn, i // 2, i % 2)
        side.addLayout(buttons)
        side.addWidget(_adopt(self.levels_label))
        side.addWidget(_adopt(self.show_overlay))
        side.addWidget(_adopt(self.show_regions))
        side.addWidget(_adopt(self.regions_label))
        side.addWidget(_label("Draw", "kioskHint", wrap=False))
        side.addWidget(_adopt(self.style_box))
        side.addWidget(_label("Fill opacity", "kioskHint", wrap=False))
        side.addWidget(_adopt(self.opacity))
        side.addWidget(_adopt(self.toggles))
        side.addWidget(_adopt(self.filter_notice))  # a filter or "Show calls anyway" is never silent here either
        side.addWidget(_adopt(self.colour_hint))
        side.addWidget(_adopt(self.summary_label))
        side.addWidget(_label("Tile inspector", "kioskHint", wrap=False))
        side.addWidget(_adopt(self.inspector))
        # a narrow touch panel: shorter labels, the inspector's patch above its facts
        self.show_regions.setText("Malignant regions")
        for i, short in enumerate({"outline": "Outlines", "fill": "Fill", "fill+outline": "Fill + outlines"}.values()):
            self.style_box.setItemText(i, short)
        self.inspector.top_layout.setDirection(QBoxLayout.Direction.TopToBottom)
        side.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(panel)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # A finger drag scrolls the panel (kinetic), as on a phone; a wheel over a slider scrolls it too.
        QScroller.grabGesture(scroll.viewport(), QScroller.ScrollerGestureType.LeftMouseButtonGesture)
        self.side_guard = WheelGuard(scroll)
        self.side_guard.guard(panel)
        self._side_scroll = scroll
        lay.addWidget(scroll, 0)
        return page

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self.idle_screen.setGeometry(self.rect())
        for sheet in (self.file_sheet, self.scale_sheet):
            sheet.fit()
        k = kiosk_scale(self.height())
        if k != self.scale_k:  # a shorter screen: smaller text and targets (the layout follows the style sheet)
            self.scale_k = k
            self.setStyleSheet(kiosk_stylesheet(k))
            self.view.scale_bar.set_font_pt(KIOSK_SCALE_BAR_PT * k)
        QTimer.singleShot(0, self._fit_recent_items)  # after the list has its new width
        # Touch-sized controls need about 440 px besides the 40 px scroll bar (less with smaller text); a share
        # of the screen keeps them unclipped and leaves the slide the rest (at 1024 px the panel takes 480,
        # at 1920 px 760, at 800 × 480 384).
        self._side_scroll.setFixedWidth(int(min(760, max(480 * k, 0.40 * self.width()))))
        # the inspector's patch (and its activation map) as large as the panel allows, with room below it
        # for its colour scale on a short screen (at 1024 × 600: 330 px)
        self.inspector.set_patch_px(min(512, self._side_scroll.width() - 90, int(0.55 * self.height())))
        if self.tile_sheet.isVisible():
            self.hide_tile_sheet()

    def _show_call(self, result: AnalysisResult | None) -> None:
        """The call and the category shares at the top of the panel (visible without scrolling).

        Shares are of the tiles counted on screen: in-domain ones, unless the out-of-domain calls
        are shown anyway; a call on tissue mostly unlike the training data is marked unreliable.
        """
        if result is None or result.n_done == 0:
            self.call_label.setText("" if result is None else "Analysing…")
            self.shares_label.setText("")
            return
        anyway = self.model.overlay.settings.show_out_of_domain
        n_out = int(result.out_of_domain.sum())
        out_text = f" · {n_out:,} out of domain" if n_out else ""
        state = "" if result.status == "complete" else (" (so far)" if result.status == "running" else
                                                         f" ({result.status})")
        if not result.counted(anyway).any():
            self.call_label.setText(f"<span style='color:#ffb347'>⚠</span> No call{state}")
            self.shares_label.setText(f"no tile in the model's domain · {plural(result.n_done, 'tile')}")
            return
        pct = result.category_percentages(anyway)
        order = sorted(pct, key=lambda c: -pct[c])
        top = order[0]
        warn = "<span style='color:#ffb347'>⚠</span> " if self.model.overlay.notice().banner else ""
        self.call_label.setText(f"{warn}<span style='color:{CATEGORY_COLORS[top]}'>■</span> {top.capitalize()} "
                                f"{pct[top]}%{state}")
        self.shares_label.setText(" · ".join(f"{c} {pct[c]}%" for c in order[1:])
                                  + f" · {plural(result.n_done, 'tile')}{out_text}")

    def repaint_overlay(self, *args) -> None:
        super().repaint_overlay(*args)
        result = self.model.analysis.shown_result()
        self._show_call(result)
        if self.tile_sheet.isVisible() and result is not None and 0 <= self.tile_sheet.index < result.n_tiles:
            self.tile_sheet.show_tile(self.tile_sheet.index, result)  # a streaming run: its call may arrive now

    # ------------------------------------------------------------------------------ the tapped tile

    def _view_clicked(self, l0_x: float, l0_y: float) -> None:
        """A tap on the slide: the tile's call in a sheet over the slide, away from the finger."""
        index = self.model.selection.select_at(l0_x, l0_y)
        result = self.model.analysis.shown_result()
        if index < 0 or result is None:
            self.hide_tile_sheet()
            return
        self.tile_sheet.show_tile(index, result)
        x, y, w, h = result.grid.rect(index)
        view = self.view
        tile = view.mapFromScene(view.vb.mapViewToScene(QRectF(x, y, w, h))).boundingRect()
        sheet = self.tile_sheet.place(view.rect(), QRectF(tile))
        if sheet.intersects(tile):  # pan the slide so the tile sits in the middle of the room the sheet leaves
            free_top, free_bottom = ((view.rect().top(), sheet.top()) if sheet.top() > view.rect().top() + 8
                                     else (sheet.bottom(), view.rect().bottom()))
            dy_px = (free_top + free_bottom) / 2 - tile.center().y()
            centre = view.visible_l0_rect().center()
            view.center_on(centre.x(), centre.y() - dy_px * view.l0_per_screen_px())

    def _on_selection(self, event: Event) -> None:
        super()._on_selection(event)
        if event.value < 0:
            self.hide_tile_sheet()

    def hide_tile_sheet(self) -> None:
        self.tile_sheet.hide()
        self.tile_sheet.index = -1

    def show_tile_details(self) -> None:
        """The sheet's "Patch and details": the panel's inspector (the patch, its map, where the tile lies)."""
        self.hide_tile_sheet()
        self._side_scroll.ensureWidgetVisible(self.inspector, 0, 0)
        bar = self._side_scroll.verticalScrollBar()
        bar.setValue(min(bar.maximum(), self.inspector.mapTo(self._side_scroll.widget(), QPoint(0, 0)).y()))

    def _on_domain(self, event: Event) -> None:
        super()._on_domain(event)
        self._show_call(self.model.analysis.shown_result())

    def _fill_screen(self) -> None:
        """Full screen, also where no window manager honours the full-screen request (bare X kiosk)."""
        self.showFullScreen()
        screen = self.screen() or QApplication.primaryScreen()
        if screen is not None and self.geometry() != screen.geometry():
            self.setGeometry(screen.geometry())

    # ------------------------------------------------------------------------------ start, pages

    def start(self) -> None:
        """Go full-screen, start watching and prepare the model."""
        self._fill_screen()
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(self._activity)
        if self.settings.watch_dir is not None:
            self._start_watching()
        self.note_activity()
        self.load_model()

    def _start_watching(self) -> None:
        """Watch the folder; what is already there and not yet in the outbox (dropped while the kiosk was off,
        or before a crash) is analysed too, oldest first, and the screen says so. A slide the kiosk stopped
        on (it may have crashed on it) is not retried on its own: it is listed as failed, to retry by touch."""
        stopped_on = self.recent.interrupted()
        done = analysed_in_outbox(self.settings.outbox())

        def skip(path: Path) -> bool:
            return done(path) or (stopped_on is not None and _same_file(path, stopped_on))

        self.watcher = WatchFolder.for_settings(self.settings, include_existing=True, skip_existing=skip)
        if stopped_on is not None:
            self.recent.add(CaseResult(
                stopped_on, "failed", f"The kiosk stopped while analysing {stopped_on.name} (it may have crashed on "
                "this file), so it is not analysed again on its own. Tap it in Recent cases to try again.",
                provider=""))
            self._refresh_recent()
        backlog = self.watcher.backlog
        if backlog:
            names = ", ".join(slide_display_name(p) for p in backlog[:3]) + ("…" if len(backlog) > 3 else "")
            self.show_info(f"{plural(len(backlog), 'slide')} already in the watch folder "
                           f"{'is' if len(backlog) == 1 else 'are'} not in the outbox yet: analysing "
                           f"{'it' if len(backlog) == 1 else 'them, oldest first'} ({names}).")
        self.poll_timer.start()
        self.poll_watch_folder()

    def show_info(self, message: str) -> None:
        """A blue card for news that is not an error; it stays until tapped or a minute has passed."""
        self.info_label.setText(message)
        self.info_card.show()
        QTimer.singleShot(60_000, self.info_card.hide)

    def set_page(self, name: str) -> None:
        self.stack.setCurrentWidget(self.pages[name])
        # The case page needs the room for the slide; the problem is back on the page after it.
        self.settings_card.setVisible(bool(self.settings_problems) and name != "case")
        if name != self.page:
            self.page = name
            self.pageChanged.emit(name)
        self._update_state_label()

    def _update_state_label(self) -> None:
        if self.current_case is not None:
            text = f"Analysing {self.current_case.name}"
        elif self.classifier is None:
            text = "Preparing model"
        elif self.watcher is not None:
            text = "Watching for slides"
        else:
            text = "Ready"
        if self.queue:
            text += f" · {len(self.queue)} waiting"
        self.state_label.setText(text)

    # ------------------------------------------------------------------------------ model

    def load_model(self) -> None:
        """Prepare the classifier on the worker; the screen says so instead of freezing."""
        if self._model_worker is not None:
            return
        s = self.settings
        self.retry_btn.hide()
        self.prepare_bar.show()
        self.prepare_title.setText(f"Preparing model {s.model}…")
        note = "The first start on TensorRT builds an optimised engine; this can take several minutes. " \
               "Later starts reuse it." if s.device in ("auto", "tensorrt") else ""
        self._prepare_note = note
        self._model_started = time.monotonic()
        self._tick_prepare()
        self.prepare_timer.start()
        self.set_page("preparing")
        loader = self._loader

        def run(cancel: CancelToken) -> Iterator[OnnxClassifier]:
            yield loader(s)

        worker = Worker(run, "kiosk-model")
        worker.item.connect(self._on_model)
        worker.failed.connect(self._on_model_failed)
        worker.done.connect(lambda: setattr(self, "_model_worker", None))
        self._model_worker = worker
        self.runner.start(worker)

    def _tick_prepare(self) -> None:
        elapsed = format_eta(time.monotonic() - self._model_started)
        self.prepare_label.setText(f"{self._prepare_note}\n{elapsed} elapsed".strip())

    def _on_model(self, classifier: OnnxClassifier) -> None:
        self.prepare_timer.stop()
        self.classifier = classifier
        self.model.analysis.spec = classifier.spec
        self.model.explain.classifier = classifier  # activation maps from the loaded model, no second copy
        self._fill_modes(classifier.spec.class_names)
        self.inspector.set_class_names(classifier.spec.class_names)
        self.provider_badge.setText(classifier.describe())
        warn = classifier.needs_attention
        self.provider_badge.setProperty("warn", "true" if warn else "false")
        self.provider_badge.setStyle(self.provider_badge.style())
        where = f"{self.settings_file}: " if self.settings_file is not None else ""
        self.settings, dropped = self.settings.for_model(classifier.spec, where)
        if dropped:
            for problem in dropped:
                log.warning("%s", problem.message)
            self.settings_problems += dropped
            self._show_settings_problems()
        self.model.settings.set_model_options(ModelOptions.from_spec(classifier.spec))  # the viewer's settings follow
        self._show_run_options_line(classifier)
        self.modelReady.emit(classifier)
        self.set_page("waiting")
        self._next_case()

    def _show_run_options_line(self, classifier: OnnxClassifier) -> None:
        """What every case runs with, on the waiting page: the model and the settings file's analysis options."""
        spec, s = classifier.spec, self.settings
        self.run_options_label.setText(
            f"Model {spec.name} {spec.version}".rstrip() + f" · stain normalisation: {STAIN_LABELS[s.stain_normalize]}"
            f" · test-time augmentation: {TTA_LABELS[s.tta]} · weights: {PRECISION_LABELS[classifier.precision]}")
        self.run_options_label.show()

    def _on_model_failed(self, exc: CellviewError) -> None:
        self.prepare_timer.stop()
        self.prepare_bar.hide()
        self.prepare_title.setText("The model could not be prepared")
        self.prepare_label.setText(exc.message)
        self.retry_btn.show()
        self.show_message(f"Model {self.settings.model}: {exc.message}")

    # ------------------------------------------------------------------------------ watch folder, queue

    def poll_watch_folder(self) -> None:
        """One look at the watch folder: queue what has settled, say what is still arriving."""
        if self.watcher is None:
            return
        try:
            ready = self.watcher.poll()
        except OSError as exc:  # a share that vanished mid-scan: report, try again next poll
            ready = []
            self.watcher.problem = f"The watch folder cannot be read ({exc.strerror or exc})."
        waiting = self.watcher.waiting
        self.receiving_label.setText("Receiving " + ", ".join(p.name for p in waiting[:3])
                                     + ("…" if len(waiting) <= 3 else f" and {len(waiting) - 3} more…")
                                     if waiting else "")
        self.receiving_label.setVisible(bool(waiting))
        self.banner_label.setText(self.watcher.problem or "")
        self.banner.setVisible(bool(self.watcher.problem))
        for path in ready:
            self.enqueue(path)

    def enqueue(self, path: str | Path) -> None:
        """Analyse ``path`` (and export it to the outbox) once the model is ready and earlier cases are done."""
        self.queue.append(Path(path))
        self._update_state_label()
        self._next_case()

    def _next_case(self) -> None:
        if self.current_case is not None or self.classifier is None or not self.queue:
            return
        self._begin_case(self.queue.pop(0), export=True)

    def _begin_case(self, path: Path, export: bool) -> None:
        """Open the slide and stream its analysis; ``export`` runs the full case (outbox, recent list).

        The model runs it: ``open`` keeps the last slide until this one has opened, then analyses
        with the kiosk's classifier as the source (no run set-up of the kiosk's own).
        """
        classifier, settings, settings_file = self.classifier, self.settings, self.settings_file
        assert classifier is not None
        self.done_card.hide()
        self.current_case = path
        self._case_export = export
        self._last_case = None
        self.case_title.setText(slide_display_name(path))
        self._show_case_page()
        mpp = self.case_mpp.get(path)
        params = settings.analysis_params(classifier.spec.patch_size_pixels, mpp_um=mpp)
        if export:
            self.recent.begin(path)

        def source(request: AnalysisRequest, cancel: CancelToken) -> Iterator[object]:
            if export:
                yield from iter_case(path, classifier, settings, cancel, mpp_um=mpp, settings_file=settings_file)
            else:
                yield from analyze(path, classifier, params, cancel, ResultCache())

        self._set_busy(True)
        self.caseStarted.emit(path)
        self._update_state_label()
        self.model.open(path, mpp_um=mpp or settings.mpp_um, analyse=True, source=source, spec=classifier.spec,
                        params=params)

    def _show_case_page(self) -> None:
        """A case opens at the top of its panel (the call first), with no sheet of an earlier one."""
        self.hide_tile_sheet()
        self._side_scroll.verticalScrollBar().setValue(0)
        self.set_page("case")

    def _on_case_item(self, event: Event) -> None:
        if isinstance(event.value, CaseResult):
            self._on_case_result(event.value)

    def _on_case_result_shown(self, event: Event) -> None:
        result = event.value
        if result is not None and result.status == "complete" and self.current_case is not None:
            self._results[self.current_case] = result
        self._show_call(result)

    def _on_case_result(self, case: CaseResult) -> None:
        self.recent.add(case)
        self._refresh_recent()
        if case.needs_scale:
            self.scale_sheet.ask(case.path, case.message)
            if self.idle:  # asked for whoever touches the screen next
                self.idle_screen.raise_()
        if case.ok:
            where = next(iter(case.outputs.values())).parent if case.outputs else self.settings.outbox()
            warning = f"\n⚠ {case.domain_warning}" if case.domain_warning else ""
            self.done_label.setText(f"✔ {case.message}{warning}\nResults saved to {where}")
            self.done_card.show()
            self.rate_label.setText("Results saved to the outbox.")  # the full path is on the waiting page
        self._last_case = case

    def _on_open_failed(self, event: Event) -> None:
        """The case's file did not open: a failed case (recent list, outbox untouched), the kiosk goes on."""
        path, exc = event.value
        if self.current_case is None or str(path) != str(self.current_case):
            return
        if self._case_export:
            case = CaseResult(self.current_case, "failed", exc.message, details=exc.details,
                              provider=self.classifier.provider_label if self.classifier else "")
            self.recent.add(case)
            self._refresh_recent()
            self._last_case = case
        self._on_case_done()

    def _fail_case(self, message: str, show: bool = True) -> None:
        """The error on screen, the slide closed, back to waiting; the watcher never stopped."""
        self.close_slide()
        if show:
            self.show_message(message)
        self.set_page("waiting")

    def _on_case_done(self) -> None:
        """The case's run (or its failed open) is over: report it, then take the next one."""
        if self.current_case is None:
            return
        self.current_case = None
        self._set_busy(False)
        case, self._last_case = self._last_case, None
        if case is not None and case.status == "failed":
            self._fail_case(case.message, show=not case.needs_scale)  # the scale sheet says it and offers the fix
        elif self.model.slide.opened is None and self.page == "case":
            self.set_page("waiting")
        if case is not None and case.ok:
            self._finished_case, self._finished_at = case, time.monotonic()
        if self.idle and case is not None and case.ok:  # nobody saw it finish: the idle screen says so
            self._wake_case = case
            self.idle_status.setText(self._idle_text())
        self._update_state_label()
        if case is not None:
            self.caseFinished.emit(case)  # after the run is over: listeners see an idle kiosk
        self._next_case()

    def _set_busy(self, busy: bool) -> None:
        self.analyse_btn2.setEnabled(not busy)

    def analyse_current(self) -> None:
        """The Analyse button: run the open slide again as a new case (exports get a fresh name)."""
        if self.opened is not None:
            self.enqueue(self.opened.path)

    def choose_case(self) -> None:
        """A finger-sized file picker inside the window (``touch.FilePickerSheet``): a dialog of its own could
        be wider than the screen or open behind the kiosk (no window manager places it)."""
        start = self.settings.watch_dir or Path.home()
        self.file_sheet.open_at(start)

    def analyse_with_scale(self, path: str, mpp_um: float) -> None:
        """The scale sheet's answer: analyse the slide again as a new case at this µm per pixel."""
        self.case_mpp[Path(path)] = float(mpp_um)
        self.enqueue(path)

    # ------------------------------------------------------------------------------ recent cases

    def _refresh_recent(self) -> None:
        self.recent_list.clear()
        for case in self.recent.items:
            when = time.strftime("%H:%M", time.localtime(case.finished_unix))
            # the call first (shares that add up to 100); the rate and provider are in the outbox metadata
            text = f"{case.name} · {when}\n" + (case.headline if case.ok else f"⚠ {case.headline}")
            if case.ok and case.domain_warning:  # the call of tissue unlike the training data is unreliable
                text += "\n⚠ unlike the model's training data: calls unreliable"
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, case)
            self.recent_list.addItem(item)
        if not self.recent.items:
            item = QListWidgetItem("No cases yet")
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.recent_list.addItem(item)
        self._fit_recent_items()

    RECENT_PADDING = (14, 8)
    """The recent-cases items' padding in the style sheet (horizontal, vertical), in px."""

    def _fit_recent_items(self) -> None:
        """Each item as tall as its text wrapped to the list's width: the call is never cut off."""
        fm = self.recent_list.fontMetrics()
        pad_x, pad_y = self.RECENT_PADDING
        width = max(50, self.recent_list.viewport().width() - 2 * pad_x - 4)
        for i in range(self.recent_list.count()):
            item = self.recent_list.item(i)
            height = self.recent_text_height(item.text(), fm, width) + 2 * pad_y + 2
            item.setSizeHint(QSize(width, max(80, height)))

    @staticmethod
    def recent_text_height(text: str, fm, width: int) -> int:
        flags = int(Qt.TextFlag.TextWordWrap | Qt.TextFlag.TextWrapAnywhere)
        return fm.boundingRect(0, 0, width, 100000, flags, text).height()

    def _recent_clicked(self, item: QListWidgetItem) -> None:
        case = item.data(Qt.ItemDataRole.UserRole)
        if isinstance(case, CaseResult):
            self.open_case(case)

    def open_case(self, case: CaseResult) -> None:
        """Show a past case: its result from this session, else re-analysed (from the result cache when it can)."""
        if self.current_case is not None:
            self.show_message("Please wait: a case is being analysed.")
            return
        if not case.path.exists():
            self.show_message(f"{case.name} is no longer in {case.path.parent}.")
            return
        if case.needs_scale and case.path not in self.case_mpp:
            self.scale_sheet.ask(case.path, case.message)
            return
        if not case.ok and case.path not in self._results:  # a failed case is tried again as a new case
            self.enqueue(case.path)
            return
        result = self._results.get(case.path)
        if result is None and self.classifier is not None:
            self._begin_case(case.path, export=False)
            return
        self.model.open(case.path, mpp_um=self.case_mpp.get(case.path) or self.settings.mpp_um, analyse=False,
                        show=result)
        self.case_title.setText(case.name)
        self._show_case_page()

    # ------------------------------------------------------------------------------ messages

    def show_message(self, message: str) -> None:
        """An error card that stays a few seconds; it never blocks and never needs an answer."""
        self.hide_idle()
        self.error_label.setText(message)
        self.error_card.show()
        self.error_timer.start()

    def hide_error(self) -> None:
        self.error_card.hide()

    def show_error(self, error: CellviewError, title: str = "CellView") -> None:
        """Viewer errors (a slide that will not open, an unreadable region) as a card, never a dialog."""
        self.errorShown.emit(error.message, error.details)
        self.show_message(error.message)
        if self.current_case is None and self.page == "case" and self.opened is None:
            self.set_page("waiting")

    def ask_mpp(self, opened) -> None:
        """No one may be at the screen to answer: the settings' ``mpp_um`` applies or the case fails."""
        return None

    # ------------------------------------------------------------------------------ idle screen

    def note_activity(self) -> None:
        self._last_activity = time.monotonic()
        if self.idle:
            self.hide_idle()
        if self.settings.idle_s > 0:
            self.idle_timer.start()

    def show_idle(self) -> None:
        """The idle screen. A case that finished since anyone last touched the screen stays behind it, and the
        screen names it: the next touch shows it (otherwise the kiosk is back on its waiting page)."""
        if self.idle or self.pin_pad is not None:
            return
        self.idle = True
        unseen = self._finished_case if self._finished_at > self._last_activity else None
        opened = self.model.slide.opened
        if unseen is not None and opened is not None and Path(opened.path) == unseen.path:
            self._wake_case = unseen
        elif self.current_case is None and self.classifier is not None:
            self.set_page("waiting")
        self.idle_status.setText(self._idle_text())
        self.idle_screen.setGeometry(self.rect())
        self.idle_screen.raise_()
        self.idle_screen.show()
        self.idleChanged.emit(True)

    def _idle_text(self) -> str:
        if self._wake_case is not None:
            case = self._wake_case
            status = f"New result: {case.name} — {case.headline}\nTouch to see it"
            if self.current_case is not None:
                status += f"\n{self.state_label.text()}"
        else:
            status = self.state_label.text()
        if self.settings_problems:
            status += "\n⚠ Settings problem: touch the screen to see it"
        return status

    def hide_idle(self) -> None:
        """The first touch after the idle screen: back where the kiosk was, or to a case that finished meanwhile."""
        if not self.idle:
            return
        self.idle = False
        self.idle_screen.hide()
        case, self._wake_case = self._wake_case, None
        if case is not None and self.current_case is None:
            if self.model.slide.opened is not None and Path(self.model.slide.opened.path) == case.path:
                self._show_case_page()
            else:
                self.open_case(case)
        self.idleChanged.emit(False)
        if self.settings.idle_s > 0:
            self.idle_timer.start()

    # ------------------------------------------------------------------------------ staying up, exiting

    def request_exit(self) -> None:
        """The exit chord: leave at once without a PIN, else ask for it on a touch pad.

        With ``exit_locked`` (a configured PIN could not be read) it only says so: failing open
        would let anyone at the screen leave the kiosk by the chord alone.
        """
        if self.exit_locked:
            self.show_message(EXIT_LOCKED_MESSAGE)
            self.exitRefused.emit()
            return
        if self.settings.pin is None:
            self.exit_kiosk()
            return
        if self.pin_pad is not None:
            return
        self._pin_tries = 0
        self.pin_pad = PinPad(self)
        self.pin_pad.entered.connect(self._check_pin)
        self.pin_pad.finished.connect(self._pin_closed)
        self.pin_pad.open()

    def _check_pin(self, entered: str) -> None:
        if self.settings.check_pin(entered):
            self.exit_kiosk()
            return
        self._pin_tries += 1
        if self.pin_pad is not None:
            if self._pin_tries >= MAX_PIN_TRIES:
                self.pin_pad.reject()
            else:
                self.pin_pad.wrong(MAX_PIN_TRIES - self._pin_tries)

    def _pin_closed(self) -> None:
        pad, self.pin_pad = self.pin_pad, None
        if pad is not None:
            pad.deleteLater()
        self._take_focus()

    def exit_kiosk(self) -> None:
        """Really close: stop the workers, then the window (the application ends with it)."""
        self._exit_allowed = True
        if self.pin_pad is not None:
            self.pin_pad.accept()
        self.exitAllowed.emit()
        self.close()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if not self._exit_allowed:
            event.ignore()  # Alt+F4, a window manager, a stray close(): only the exit chord leaves
            return
        self.poll_timer.stop()
        self.idle_timer.stop()
        app = QApplication.instance()
        if app is not None:
            app.removeEventFilter(self._activity)
        super().closeEvent(event)

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().changeEvent(event)
        if event.type() == QEvent.Type.WindowStateChange and not self._exit_allowed and not self.isFullScreen():
            QTimer.singleShot(0, self._reassert_full_screen)

    def _reassert_full_screen(self) -> None:
        if not self._exit_allowed and not self.isFullScreen():
            self._fill_screen()


def settings_from_args(args: argparse.Namespace) -> SalvagedSettings:
    """The settings file (``--kiosk-config`` or the default one) with --watch/--outbox/--model/--device/
    --stain-normalize/--tta/--precision on top.

    Lenient (:meth:`KioskSettings.load_lenient`): bad values are dropped and reported, never
    raised. ``--device auto``, ``--stain-normalize none``, ``--tta none`` and ``--precision auto`` are the parser's
    defaults, so they cannot be told from "not given": they keep the file's values.
    """
    device = getattr(args, "device", None)
    stain, tta = getattr(args, "stain_normalize", None), getattr(args, "tta", None)
    precision = getattr(args, "precision", None)
    return KioskSettings.load_lenient(
        getattr(args, "kiosk_config", None), watch_dir=getattr(args, "watch", None),
        outbox_dir=getattr(args, "outbox", None), model=getattr(args, "model", None),
        device=None if device == "auto" else device, stain_normalize=None if stain == "none" else stain,
        tta=None if tta == "none" else tta, precision=None if precision == "auto" else precision)


def build_kiosk(args: argparse.Namespace,
                classifier_loader: Callable[[KioskSettings], OnnxClassifier] = load_classifier) -> KioskWindow:
    """The kiosk window for these arguments, not started; settings problems go to stderr (the journal).

    A bad settings file never stops the kiosk: under systemd's ``Restart=on-failure`` that would
    be a restart loop on a blank screen. It starts with what was valid and shows the rest.
    """
    loaded = settings_from_args(args)
    for problem in loaded.problems:
        print(f"cellview: {problem.message}" + (f"\n  {problem.details}" if problem.details else ""), file=sys.stderr)
    if loaded.exit_locked:
        print(f"cellview: {EXIT_LOCKED_MESSAGE}", file=sys.stderr)
    return KioskWindow(loaded.settings, classifier_loader, settings_problems=loaded.problems,
                       exit_locked=loaded.exit_locked, settings_file=loaded.path)


def run_kiosk(args: argparse.Namespace) -> int:
    """`cellview --kiosk`: runs until the operator's exit chord (and PIN), even on a bad settings file."""
    app = make_app()
    window = build_kiosk(args)
    window.start()
    return int(app.exec())
