"""The kiosk's pages besides the case: "preparing" (the model loads on a worker behind it, minutes on a first
TensorRT start) and "waiting" (where slides go, what every case runs with, what is arriving, the last case's
outcome and the recent cases)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QScroller,
    QVBoxLayout,
    QWidget,
)

from cellview.analysis.classifier import OnnxClassifier
from cellview.analysis.model_spec import PRECISION_LABELS
from cellview.analysis.pipeline import CancelToken
from cellview.base.errors import CellviewError
from cellview.gui.kiosk.widgets import card
from cellview.gui.panels.run_status import format_eta
from cellview.gui.widgets.cards import text_label
from cellview.gui.worker import QtRunner, Worker
from cellview.outputs.legend import STAIN_LABELS, TTA_LABELS
from cellview.viewer.kiosk.cases import CaseResult
from cellview.viewer.kiosk.settings import KioskSettings


class PreparingPage(QWidget):
    """Loads the classifier on a worker (``load``) and says so instead of freezing: ``ready`` carries the
    classifier, ``failed`` the error (the page then offers ``retry_btn``)."""

    ready = Signal(object)  # OnnxClassifier
    failed = Signal(object)  # CellviewError
    retryRequested = Signal()

    def __init__(self, runner: QtRunner, loader: Callable[[KioskSettings], OnnxClassifier]) -> None:
        super().__init__()
        self.runner = runner
        self.loader = loader
        self.worker: Worker | None = None
        self._started = 0.0
        self._note = ""
        lay = QVBoxLayout(self)
        lay.addStretch(1)
        self.prepare_title = text_label("Preparing model…", "kioskHeadline")
        self.prepare_title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(self.prepare_title)
        self.prepare_bar = QProgressBar()
        self.prepare_bar.setRange(0, 0)  # indeterminate: an engine build reports no progress
        self.prepare_bar.setTextVisible(False)
        lay.addWidget(self.prepare_bar)
        self.prepare_label = text_label("", "kioskHint")
        self.prepare_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(self.prepare_label)
        self.retry_btn = QPushButton("Try again")
        self.retry_btn.clicked.connect(self.retryRequested)
        self.retry_btn.hide()
        lay.addWidget(self.retry_btn, 0, Qt.AlignmentFlag.AlignCenter)
        lay.addStretch(2)
        self.timer = QTimer(self, interval=1000)
        self.timer.timeout.connect(self._tick)

    def load(self, settings: KioskSettings) -> bool:
        """Prepare the classifier on the worker; False if one is being prepared already."""
        if self.worker is not None:
            return False
        self.retry_btn.hide()
        self.prepare_bar.show()
        self.prepare_title.setText(f"Preparing model {settings.model}…")
        self._note = "The first start on TensorRT builds an optimised engine; this can take several minutes. " \
                     "Later starts reuse it." if settings.device in ("auto", "tensorrt") else ""
        self._started = time.monotonic()
        self._tick()
        self.timer.start()
        loader = self.loader

        def run(cancel: CancelToken) -> Iterator[OnnxClassifier]:
            yield loader(settings)

        worker = Worker(run, "kiosk-model")
        worker.item.connect(self._on_model)
        worker.failed.connect(self._on_failed)
        worker.done.connect(lambda: setattr(self, "worker", None))
        self.worker = worker
        self.runner.start(worker)
        return True

    def _tick(self) -> None:
        elapsed = format_eta(time.monotonic() - self._started)
        self.prepare_label.setText(f"{self._note}\n{elapsed} elapsed".strip())

    def _on_model(self, classifier: OnnxClassifier) -> None:
        self.timer.stop()
        self.ready.emit(classifier)

    def _on_failed(self, exc: CellviewError) -> None:
        self.timer.stop()
        self.prepare_bar.hide()
        self.prepare_title.setText("The model could not be prepared")
        self.prepare_label.setText(exc.message)
        self.retry_btn.show()
        self.failed.emit(exc)


class WaitingPage(QWidget):
    """The watch folder's page; ``openRequested`` (the Open button), ``caseChosen`` (a tap on a recent case)."""

    openRequested = Signal()
    caseChosen = Signal(object)  # CaseResult

    RECENT_PADDING = (14, 8)
    """The recent-cases items' padding in the style sheet (horizontal, vertical), in px."""

    def __init__(self, watch_dir: Path | None) -> None:
        super().__init__()
        lay = QHBoxLayout(self)
        lay.setSpacing(24)
        column = QWidget()
        left = QVBoxLayout(column)
        left.setContentsMargins(0, 0, 0, 0)
        left.addStretch(1)
        self.waiting_title = text_label("Waiting for a slide", "kioskHeadline")
        left.addWidget(self.waiting_title)
        self.waiting_hint = text_label(
            f"Put a slide or image into\n{watch_dir}\nIt opens and is analysed automatically."
            if watch_dir is not None else "Tap “Open slide” to choose a slide or image.", "kioskHint")
        left.addWidget(self.waiting_hint)
        self.run_options_label = text_label("", "kioskHint")  # the analysis settings every case runs with
        self.run_options_label.hide()
        left.addWidget(self.run_options_label)
        self.receiving_label = text_label("", "kioskHint")
        self.receiving_label.hide()
        left.addWidget(self.receiving_label)
        self.done_card, self.done_label = card("kioskDone")
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
        self.open_btn.clicked.connect(self.openRequested)
        row.addWidget(self.open_btn)
        row.addStretch(1)
        stack.addLayout(row)
        lay.addLayout(stack, 3)
        right = QVBoxLayout()
        right.addWidget(text_label("Recent cases", "kioskTitle"))
        self.recent_list = QListWidget()
        self.recent_list.setVerticalScrollMode(QListWidget.ScrollMode.ScrollPerPixel)
        self.recent_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.recent_list.setWordWrap(True)  # the call is never cut off: it wraps onto another line
        self.recent_list.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.recent_list.itemClicked.connect(self._recent_clicked)
        QScroller.grabGesture(self.recent_list.viewport(), QScroller.ScrollerGestureType.LeftMouseButtonGesture)
        right.addWidget(self.recent_list, 1)
        lay.addLayout(right, 2)

    def show_run_options(self, classifier: OnnxClassifier, s: KioskSettings) -> None:
        """What every case runs with: the model and the settings file's analysis options."""
        spec = classifier.spec
        self.run_options_label.setText(
            f"Model {spec.name} {spec.version}".rstrip() + f" · stain normalisation: {STAIN_LABELS[s.stain_normalize]}"
            f" · test-time augmentation: {TTA_LABELS[s.tta]} · weights: {PRECISION_LABELS[classifier.precision]}")
        self.run_options_label.show()

    def show_receiving(self, waiting: Sequence[Path]) -> None:
        """The files still being copied in (not opened until they have settled)."""
        self.receiving_label.setText("Receiving " + ", ".join(p.name for p in waiting[:3])
                                     + ("…" if len(waiting) <= 3 else f" and {len(waiting) - 3} more…")
                                     if waiting else "")
        self.receiving_label.setVisible(bool(waiting))

    def show_done(self, case: CaseResult, outbox: Path) -> None:
        where = next(iter(case.outputs.values())).parent if case.outputs else outbox
        warning = f"\n⚠ {case.domain_warning}" if case.domain_warning else ""
        self.done_label.setText(f"✔ {case.message}{warning}\nResults saved to {where}")
        self.done_card.show()

    # ------------------------------------------------------------------------------ recent cases

    def show_recent(self, cases: Sequence[CaseResult]) -> None:
        self.recent_list.clear()
        for case in cases:
            when = time.strftime("%H:%M", time.localtime(case.finished_unix))
            # the call first (shares that add up to 100); the rate and provider are in the outbox metadata
            text = f"{case.name} · {when}\n" + (case.headline if case.ok else f"⚠ {case.headline}")
            if case.ok and case.domain_warning:  # the call of tissue unlike the training data is unreliable
                text += "\n⚠ unlike the model's training data: calls unreliable"
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, case)
            self.recent_list.addItem(item)
        if not cases:
            item = QListWidgetItem("No cases yet")
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.recent_list.addItem(item)
        self.fit_recent_items()

    def fit_recent_items(self) -> None:
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
            self.caseChosen.emit(case)
