"""Leaving the kiosk: only the exit chord does, and with a PIN configured only after it is typed on a
finger-sized pad placed inside the screen (no window manager places it). With ``exit_locked`` (a configured PIN
could not be read) the chord only says so: failing open would let anyone at the screen leave by the chord alone.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, QSize, Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QDialog, QGridLayout, QHBoxLayout, QLineEdit, QPushButton, QVBoxLayout, QWidget

from cellview.gui.widgets.cards import text_label

MAX_PIN_TRIES = 3

EXIT_LOCKED_MESSAGE = ("Leaving the kiosk is disabled: the PIN in the kiosk settings file cannot be used. "
                       "Fix the settings file, then restart the kiosk service.")


class ExitGuard(QObject):
    """The exit chord (``shortcut``, application-wide) and the PIN pad it opens (``pin_pad`` while open);
    ``allowed`` once the kiosk may close. ``refused`` fires when the chord cannot leave."""

    refused = Signal()

    def __init__(self, kiosk: Any, chord: str) -> None:
        super().__init__(kiosk)
        self.kiosk = kiosk
        self.allowed = False
        self.pin_pad: PinPad | None = None
        self._tries = 0
        self.shortcut = QShortcut(QKeySequence(chord), kiosk)
        self.shortcut.setContext(Qt.ShortcutContext.ApplicationShortcut)
        self.shortcut.activated.connect(self.request)

    def request(self) -> None:
        """The exit chord: leave at once without a PIN, else ask for it on a touch pad."""
        kiosk = self.kiosk
        if kiosk.exit_locked:
            kiosk.show_message(EXIT_LOCKED_MESSAGE)
            self.refused.emit()
            return
        if kiosk.settings.pin is None:
            kiosk.exit_kiosk()
            return
        if self.pin_pad is not None:
            return
        self._tries = 0
        self.pin_pad = PinPad(kiosk)
        self.pin_pad.entered.connect(self._check_pin)
        self.pin_pad.finished.connect(self._pin_closed)
        self.pin_pad.open()

    def _check_pin(self, entered: str) -> None:
        if self.kiosk.settings.check_pin(entered):
            self.kiosk.exit_kiosk()
            return
        self._tries += 1
        if self.pin_pad is not None:
            if self._tries >= MAX_PIN_TRIES:
                self.pin_pad.reject()
            else:
                self.pin_pad.wrong(MAX_PIN_TRIES - self._tries)

    def _pin_closed(self) -> None:
        pad, self.pin_pad = self.pin_pad, None
        if pad is not None:
            pad.deleteLater()
        self.kiosk.take_focus()

    def allow(self) -> None:
        """The kiosk may close now (the PIN was right, or none is needed)."""
        self.allowed = True
        if self.pin_pad is not None:
            self.pin_pad.accept()


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
        left.addWidget(text_label("Enter the PIN to leave kiosk mode", "kioskTitle"))
        self.field = QLineEdit()
        self.field.setEchoMode(QLineEdit.EchoMode.Password)
        self.field.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.field.returnPressed.connect(self.submit)
        left.addWidget(self.field)
        self.message = text_label("", "kioskHint")
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
