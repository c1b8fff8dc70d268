"""The kiosk's idle screen: after ``idle_s`` without a touch it covers everything (a bright slide must not burn
in, and a passer-by sees what the station does). A case that finished since anyone last touched the screen
stays behind it and the screen names it: the next touch shows it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QFrame, QVBoxLayout

from cellview.gui.widgets.cards import text_label
from cellview.viewer.kiosk.cases import CaseResult

ACTIVITY_EVENTS = {
    QEvent.Type.MouseButtonPress, QEvent.Type.MouseButtonRelease, QEvent.Type.MouseMove, QEvent.Type.KeyPress,
    QEvent.Type.TouchBegin, QEvent.Type.TouchUpdate, QEvent.Type.Wheel, QEvent.Type.TabletPress,
}


class ActivityFilter(QObject):
    """App-wide: any touch, click or key press counts as someone being at the screen."""

    def __init__(self, on_activity: Callable[[], None]) -> None:
        super().__init__()
        self._on_activity = on_activity

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() in ACTIVITY_EVENTS:
            self._on_activity()
        return False


class IdleScreen(QFrame):
    """Over the whole ``kiosk`` window; ``active`` while shown, ``changed`` when it comes or goes.

    ``last_activity`` is when the screen was last touched, ``finished_case`` / ``finished_at`` the last case
    finished and when (``time.monotonic``), ``wake_case`` the case to show on the next touch.
    """

    changed = Signal(bool)

    def __init__(self, kiosk: Any) -> None:
        super().__init__(kiosk)
        self.kiosk = kiosk
        self.active = False
        self.last_activity = 0.0
        self.finished_case: CaseResult | None = None
        self.finished_at = 0.0
        self.wake_case: CaseResult | None = None
        self.setObjectName("kioskIdle")
        il = QVBoxLayout(self)
        il.addStretch(1)
        for text, name in (("CellView", "kioskHeadline"), ("Touch the screen to continue", "kioskHint")):
            lab = text_label(text, name)
            lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
            il.addWidget(lab)
        self.status = text_label("", "kioskHint")
        self.status.setAlignment(Qt.AlignmentFlag.AlignCenter)
        il.addWidget(self.status)
        il.addStretch(1)
        self.hide()
        idle_s = kiosk.settings.idle_s
        self.timer = QTimer(self, singleShot=True, interval=max(1, int(idle_s * 1000)))
        self.timer.timeout.connect(self.show_idle)
        self.activity = ActivityFilter(self.note_activity)

    def note_activity(self) -> None:
        self.last_activity = time.monotonic()
        if self.active:
            self.hide_idle()
        if self.kiosk.settings.idle_s > 0:
            self.timer.start()

    def case_finished(self, case: CaseResult) -> None:
        """A case is over: remembered for the next idle screen, named on this one if it is up."""
        if case.ok:
            self.finished_case, self.finished_at = case, time.monotonic()
        if self.active and case.ok:  # nobody saw it finish: the idle screen says so
            self.wake_case = case
            self.status.setText(self.text())

    def show_idle(self) -> None:
        """The idle screen. A case that finished since anyone last touched the screen stays behind it, and the
        screen names it: the next touch shows it (otherwise the kiosk is back on its waiting page)."""
        kiosk = self.kiosk
        if self.active or kiosk.exit_guard.pin_pad is not None:
            return
        self.active = True
        unseen = self.finished_case if self.finished_at > self.last_activity else None
        opened = kiosk.model.slide.opened
        if unseen is not None and opened is not None and Path(opened.path) == unseen.path:
            self.wake_case = unseen
        elif kiosk.cases.current is None and kiosk.cases.classifier is not None:
            kiosk.set_page("waiting")
        self.status.setText(self.text())
        self.setGeometry(kiosk.rect())
        self.raise_()
        self.show()
        self.changed.emit(True)

    def text(self) -> str:
        state = self.kiosk.header.state_label.text()
        if self.wake_case is not None:
            case = self.wake_case
            status = f"New result: {case.name} — {case.headline}\nTouch to see it"
            if self.kiosk.cases.current is not None:
                status += f"\n{state}"
        else:
            status = state
        if self.kiosk.settings_problems:
            status += "\n⚠ Settings problem: touch the screen to see it"
        return status

    def hide_idle(self) -> None:
        """The first touch after the idle screen: back where the kiosk was, or to a case that finished meanwhile."""
        if not self.active:
            return
        kiosk = self.kiosk
        self.active = False
        self.hide()
        case, self.wake_case = self.wake_case, None
        if case is not None and kiosk.cases.current is None:
            opened = kiosk.model.slide.opened
            if opened is not None and Path(opened.path) == case.path:
                kiosk.show_case_page()
            else:
                kiosk.open_case(case)
        self.changed.emit(False)
        if kiosk.settings.idle_s > 0:
            self.timer.start()
