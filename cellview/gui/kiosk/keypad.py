"""A finger-sized keypad for a decimal number (the kiosk has no keyboard): 0–9, the decimal point and ⌫.

The scale sheet types a pixel size with it: any value a scanner records (0.62, 0.4415 µm/px), where steps of
0.05 could reach neither.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QGridLayout, QPushButton, QWidget

KEYS = ("7", "8", "9", "4", "5", "6", "1", "2", "3", ".", "0", "⌫")
MAX_CHARS = 8  # "0.123456": more would not fit the field, and no scanner records more decimals


def typed(text: str, key: str) -> str:
    """``text`` after pressing ``key`` (unchanged when the key would not make a number: a second point, too long)."""
    if key == "⌫":
        return text[:-1]
    if len(text) >= MAX_CHARS:
        return text
    if key == ".":
        return text if "." in text else (text or "0") + "."
    if text == "0":
        return key  # no leading zeros: "07" is "7"
    return text + key


def typed_value(text: str) -> float | None:
    """The number typed so far, or None ("", ".")."""
    try:
        return float(text)
    except ValueError:
        return None


class DecimalPad(QWidget):
    """``keys`` by their label; ``changed`` carries the text typed so far (``text``)."""

    changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = ""
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(6)
        self.keys: dict[str, QPushButton] = {}
        for i, key in enumerate(KEYS):
            btn = QPushButton(key)
            btn.setObjectName("padKey")
            btn.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            btn.clicked.connect(lambda _c=False, k=key: self.press(k))
            grid.addWidget(btn, i // 3, i % 3)
            self.keys[key] = btn

    def press(self, key: str) -> None:
        self.set_text(typed(self.text, key))

    def set_text(self, text: str) -> None:
        self.text = text
        self.changed.emit(text)
