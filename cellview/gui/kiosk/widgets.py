"""The kiosk's small widgets: a one-line label that elides, a card holding one message, a text that scrolls
rather than growing past the screen."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QLabel, QScrollArea, QScroller, QSizePolicy

from cellview.gui.widgets.cards import text_label


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


def card(name: str) -> tuple[QFrame, QLabel]:
    """A hidden, styled frame (by object name) holding one wrapped label."""
    frame = QFrame()
    frame.setObjectName(name)
    label = text_label("")
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
