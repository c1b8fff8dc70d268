"""The one label maker, a one-line label that elides, figures kept with their units, the side panel's titled cards
and the model card dialog."""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QLabel,
    QSizePolicy,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)


def text_label(text: str = "", name: str = "", wrap: bool = True) -> QLabel:
    """A label styled by its object name (``hint``: small and grey; the kiosk's names: finger-sized), wrapped
    unless told otherwise. Every window and panel makes its labels here."""
    label = QLabel(text)
    if name:
        label.setObjectName(name)
    label.setWordWrap(wrap)
    return label


NBSP = "\u00a0"
_UNITS = re.compile(r"(?<=\d) (?=%|mm²|µm²|µm|mm|px\b|tiles?\b|regions?\b)|(?<=[≥≤]) (?=\d)")


def unbreakable(text: str) -> str:
    """``text`` with a figure and its unit kept on one line ("11 %", "0.10 mm²", "48 tiles", "≥ 0.9"): the same
    words, read as one (a wrapped "11" above "% of tiles" was read as 11 tiles, a lone "0.9)" as a figure)."""
    return _UNITS.sub(NBSP, text)


class ElidedLabel(QLabel):
    """One line that ends in "…" when it does not fit, instead of wrapping or being clipped (the kiosk's header, the
    desktop's status bar): the whole text is then its tooltip."""

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

    def elided(self) -> bool:
        return self.shown_text() != self.text()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setPen(self.palette().windowText().color())
        p.setFont(self.font())
        p.drawText(self.contentsRect(), int(self.alignment() | Qt.AlignmentFlag.AlignVCenter), self.shown_text())
        p.end()


def section(title: str) -> tuple[QFrame, QVBoxLayout]:
    """A titled card in the side panel."""
    frame = QFrame()
    frame.setObjectName("card")
    lay = QVBoxLayout(frame)
    lay.setContentsMargins(10, 6, 10, 8)
    lay.setSpacing(4)
    lay.addWidget(text_label(title.upper(), "cardTitle", wrap=False))
    return frame, lay


def show_model_card(parent: QWidget, model_path: str | Path | None) -> None:
    """The model's MODEL_CARD.md, read-only (Markdown rendered by Qt)."""
    if not model_path:
        return
    card = Path(model_path).parent / "MODEL_CARD.md"
    dlg = QDialog(parent)
    dlg.setWindowTitle(f"Model card — {Path(model_path).parent.name}")
    lay = QVBoxLayout(dlg)
    view = QTextBrowser()
    try:
        view.setMarkdown(card.read_text(encoding="utf-8"))
    except OSError:
        view.setPlainText(f"{card} cannot be read.")
    lay.addWidget(view)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
    buttons.rejected.connect(dlg.reject)
    lay.addWidget(buttons)
    screen = parent.screen().availableGeometry() if parent.screen() else None
    dlg.resize(min(900, screen.width() - 40) if screen else 900, min(700, screen.height() - 60) if screen else 700)
    dlg.exec()

