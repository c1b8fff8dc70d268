"""The one label maker, the side panel's titled cards and the model card dialog."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QLabel,
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

