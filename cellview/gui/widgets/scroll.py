"""A scrolling panel of controls that a mouse wheel scrolls, not changes (both windows' side panels)."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QAbstractSlider, QAbstractSpinBox, QApplication, QComboBox, QScrollArea, QWidget


class WheelGuard(QObject):
    """A wheel turned over a slider, combo box or spin box that does not have the focus scrolls the
    panel instead of changing the value (click the control first to wheel it)."""

    def __init__(self, scroll: QScrollArea) -> None:
        super().__init__(scroll)
        self.scroll = scroll

    def guard(self, root: QWidget) -> None:
        for kind in (QAbstractSlider, QComboBox, QAbstractSpinBox):
            for widget in root.findChildren(kind):
                if isinstance(widget, QAbstractSlider) and widget.parent() is self.scroll:
                    continue  # the panel's own scroll bars
                widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
                widget.installEventFilter(self)

    @staticmethod
    def takes_wheel(widget: QWidget) -> bool:
        """A control takes the wheel once the user has clicked (focused) it."""
        return widget.hasFocus()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Wheel and isinstance(obj, QWidget) and not self.takes_wheel(obj):
            QApplication.sendEvent(self.scroll.verticalScrollBar(), event)
            return True
        return False
