"""Help → Keyboard shortcuts: read from the window's own menus, so the list is never out of date."""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QMenu, QMenuBar, QVBoxLayout, QWidget

POINTER_AND_KEYS = (
    ("Click a tile", "show it in the tile inspector"),
    ("Arrow keys", "step the selection to the neighbouring tile"),
    ("Mouse wheel", "zoom at the pointer"),
    ("Drag", "pan the slide"),
    ("Click or drag the overview", "jump there"),
    ("Shift+click a tile", "pick it for labelling (again: unpick it)"),
    ("Shift+drag", "pick the tiles in a rectangle for labelling"),
)
"""What no menu entry carries."""


def menu_shortcuts(bar: QMenuBar) -> list[tuple[str, str, str]]:
    """(menu, entry, keys) for every menu entry with a shortcut, in menu order ("Ctrl++, Ctrl+=")."""
    rows: list[tuple[str, str, str]] = []

    def walk(menu: QMenu, where: str) -> None:
        for action in menu.actions():
            if action.menu() is not None:
                walk(action.menu(), f"{where} → {action.text().replace('&', '')}")
            elif not action.isSeparator() and action.isVisible() and action.shortcuts():
                keys = ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts())
                rows.append((where, action.text().replace("&", "").rstrip("…").strip(), keys))

    for top in bar.actions():
        if isinstance(top, QAction) and top.menu() is not None:
            walk(top.menu(), top.text().replace("&", ""))
    return rows


def shortcuts_html(bar: QMenuBar) -> str:
    rows = "".join(f"<tr><td><b>{keys}</b></td><td>{entry}</td><td style='color:#8d969e'>{menu}</td></tr>"
                   for menu, entry, keys in menu_shortcuts(bar))
    rows += "".join(f"<tr><td><b>{what}</b></td><td>{does}</td><td></td></tr>" for what, does in POINTER_AND_KEYS)
    return f"<table cellspacing='0' cellpadding='4'>{rows}</table>"


class ShortcutsDialog(QDialog):
    def __init__(self, bar: QMenuBar, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        lay = QVBoxLayout(self)
        self.table = QLabel(shortcuts_html(bar))
        lay.addWidget(self.table)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
