"""The kiosk's small widgets: a file name that wraps rather than being cut, a card holding one message, a text that
scrolls rather than growing past the screen (and ``ElidedLabel``, the one-line label both windows use)."""

from __future__ import annotations

import re

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QLabel, QScrollArea, QScroller, QSizePolicy

from cellview.gui.kiosk.style import THIN_SCROLL_BAR
from cellview.gui.widgets.cards import ElidedLabel, text_label

__all__ = ["ElidedLabel", "NameLabel", "TextScroll", "breakable", "card"]


ZWSP = "\u200b"


def breakable(name: str) -> str:
    """A file name or path that may wrap after its "-", "_", ".", "/" and "\\" too (zero-width spaces): long
    scanner names and paths have no spaces; a name cut to "CMU-1-Small-Regio…" is not the case's name, and an
    unbreakable path made the full-screen window wider than the screen."""
    return re.sub(r"([-_./\\])(?=\S)", lambda m: m[1] + ZWSP, name)


class NameLabel(QLabel):
    """A file name shown whole: wrapped (``breakable``) rather than cut; ``name`` is the text as given."""

    def __init__(self, name: str = "", style: str = "") -> None:
        super().__init__()
        if style:
            self.setObjectName(style)
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.name = ""
        self.setText(name)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        self.name = text
        super().setText(breakable(text))


def card(name: str, shrinks: bool = False) -> tuple[QFrame, QLabel]:
    """A hidden, styled frame (by object name) holding one wrapped label. ``shrinks``: the label may scroll down to
    one line (``TextScroll``), so a long message above the pages never makes the window taller than the screen (a
    full-screen kiosk would then leave full screen)."""
    frame = QFrame()
    frame.setObjectName(name)
    label = text_label("")
    if shrinks:
        text = TextScroll(label)
        text.verticalScrollBar().setStyleSheet(THIN_SCROLL_BAR)
        QHBoxLayout(frame).addWidget(text, 1)
    else:
        QHBoxLayout(frame).addWidget(label, 1)
    frame.hide()
    return frame, label


class TextScroll(QScrollArea):
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
