"""A dark-neutral theme: the slide's colours stay the brightest thing on screen."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

STYLESHEET = """
QMainWindow, QDockWidget { background: #1f2326; }
QDockWidget::title { padding: 6px 10px; background: #1f2326; color: #8d969e; }
QScrollArea, QScrollArea > QWidget > QWidget { background: #1f2326; border: none; }
QFrame#card { background: #2a2f33; border: 1px solid #363c41; border-radius: 6px; }
QLabel#cardTitle { color: #8d969e; font-size: 10px; font-weight: 700; letter-spacing: 1px; }
QLabel#hint { color: #8d969e; font-size: 11px; }
QLabel#callHeadline { font-size: 16px; font-weight: 700; }
QLabel#callEvidence { color: #e6e9ec; }
QPushButton { background: #3a4147; border: 1px solid #4a5259; border-radius: 4px; padding: 5px 12px; color: #e6e9ec; }
QPushButton:hover { background: #444c53; }
QPushButton:disabled { color: #6c757d; background: #30363b; border-color: #3a4147; }
QPushButton#primary { background: #2f6fb3; border-color: #3a7fc6; font-weight: 600; }
QPushButton#primary:hover { background: #3a7fc6; }
QPushButton#primary:disabled { background: #2b4057; color: #8aa0b5; }
QProgressBar { background: #1b1e21; border: 1px solid #3d4348; border-radius: 4px; text-align: center;
               color: #e6e9ec; height: 18px; }
QProgressBar::chunk { background: #2f6fb3; border-radius: 3px; }
QComboBox, QDoubleSpinBox, QSpinBox { background: #1b1e21; border: 1px solid #3d4348; border-radius: 4px;
                                      padding: 3px 6px; color: #e6e9ec; }
QStatusBar { background: #171a1c; color: #aab2b9; }
QStatusBar QLabel { color: #aab2b9; padding: 0 8px; }
QLabel#warn { color: #ffb347; }
QMenuBar { background: #1b1e21; color: #d5dadf; }
QMenuBar::item:selected { background: #2f3539; }
QMenu { background: #2a2f33; color: #e6e9ec; border: 1px solid #3d4348; }
QMenu::item:selected { background: #2f6fb3; }
QToolTip { background: #111416; color: #e6e9ec; border: 1px solid #3d4348; padding: 4px; }
QLabel#inspectorTitle { font-size: 15px; font-weight: 600; }
QLabel#inspectorSubtitle { color: #aab2b9; }
QLabel#inspectorDetails { color: #c3c9ce; font-family: 'DejaVu Sans Mono', monospace; font-size: 11px; }
QLabel#categoryCount { color: #c3c9ce; }
QLabel#levelsWarning { color: #ffb347; font-size: 11px; }
QFrame#domainBanner { background: #5a4316; border: none; border-bottom: 2px solid #ffb347; }
QFrame#domainNote { background: #2a2f33; border: none; border-bottom: 1px solid #4a5259; }
QLabel#domainBannerText { color: #f3ead8; }
QFrame#filterNotice { background: #5a4316; border: 1px solid #ffb347; border-radius: 4px; }
QLabel#filterNoticeText { color: #f3ead8; }
QFrame#emptyHint { background: rgba(20, 22, 25, 215); border: 1px solid #3d4348; border-radius: 8px; }
QLabel#emptyTitle { color: #e6e9ec; font-size: 17px; font-weight: 600; }
QLabel#emptyRecentTitle { color: #8d969e; font-size: 11px; font-weight: 700; letter-spacing: 1px; padding-top: 8px; }
QPushButton#recentSlide { background: transparent; border: none; color: #7fb4ec; text-align: left; padding: 3px 4px; }
QPushButton#recentSlide:hover { color: #a9cdf3; text-decoration: underline; }
"""


def apply_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    pal = QPalette()
    base, window, text = QColor("#1b1e21"), QColor("#1f2326"), QColor("#e6e9ec")
    pal.setColor(QPalette.ColorRole.Window, window)
    pal.setColor(QPalette.ColorRole.WindowText, text)
    pal.setColor(QPalette.ColorRole.Base, base)
    pal.setColor(QPalette.ColorRole.AlternateBase, QColor("#262a2e"))
    pal.setColor(QPalette.ColorRole.Text, text)
    pal.setColor(QPalette.ColorRole.Button, QColor("#3a4147"))
    pal.setColor(QPalette.ColorRole.ButtonText, text)
    pal.setColor(QPalette.ColorRole.Highlight, QColor("#2f6fb3"))
    pal.setColor(QPalette.ColorRole.HighlightedText, QColor("white"))
    pal.setColor(QPalette.ColorRole.ToolTipBase, QColor("#111416"))
    pal.setColor(QPalette.ColorRole.ToolTipText, text)
    pal.setColor(QPalette.ColorRole.PlaceholderText, QColor("#8d969e"))
    pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#6c757d"))
    pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#6c757d"))
    app.setPalette(pal)
    app.setStyleSheet(STYLESHEET)
