"""Leaving the kiosk: a finger-sized PIN pad, placed inside the screen (no window manager places it)."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import QDialog, QGridLayout, QHBoxLayout, QLineEdit, QPushButton, QVBoxLayout, QWidget

from cellview.gui.widgets.cards import text_label


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
