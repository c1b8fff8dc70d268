"""The kiosk's look: text readable from a metre away and targets a finger hits, scaled down on short screens."""

from __future__ import annotations

import re

# Readable from a metre away and hittable with a finger: ≥ 20 pt text, ≥ 64 px targets on a 600-px-high
# screen; "@" sizes shrink with shorter screens (``kiosk_stylesheet``), to 80 % on an 800 × 480 one.
KIOSK_STYLESHEET_TEMPLATE = """
QWidget { font-size: @20pt; }
QLabel#kioskTitle { font-size: @26pt; font-weight: 700; color: #e6e9ec; }
QLabel#kioskHeadline { font-size: @34pt; font-weight: 700; color: #e6e9ec; }
QLabel#kioskHint, QLabel#hint { font-size: @20pt; color: #aab2b9; }
QLabel#kioskProvider { font-size: @20pt; color: #9fd3a0; }
QLabel#kioskProvider[warn="true"] { color: #ffb347; }
QFrame#kioskBanner { background: #5a4316; border-radius: @8px; }
QFrame#kioskError { background: #6b1f24; border: 2px solid #c2414b; border-radius: @10px; }
QFrame#kioskDone { background: #1d4a2c; border: 2px solid #3d9a5b; border-radius: @10px; }
QFrame#kioskIdle { background: #101214; }
QFrame#kioskSettings { background: #4a3510; border: 2px solid #ffb347; border-radius: @10px; }
QLabel#kioskSettingsTitle { font-size: @24pt; font-weight: 700; color: #ffd08a; }
QPushButton { min-height: @64px; min-width: @64px; padding: @8px @24px; font-size: @22pt; border-radius: @10px; }
QPushButton#pinKey { min-width: @110px; min-height: @96px; font-size: @30pt; }
QCheckBox { min-height: @64px; spacing: @18px; font-size: @20pt; }
QCheckBox::indicator { width: @40px; height: @40px; }
QSlider { min-height: @64px; }
QSlider::groove:horizontal { height: @14px; background: #3a4147; border-radius: @7px; }
QSlider::sub-page:horizontal { background: #2f6fb3; border-radius: @7px; }
QSlider::handle:horizontal { width: @52px; height: @52px; margin: -@19px 0; border-radius: @26px; background: #e6e9ec; }
QListWidget { background: #1b1e21; border: 1px solid #3d4348; border-radius: @8px; font-size: @20pt; }
QListWidget::item { min-height: @80px; padding: @8px @14px; border-bottom: 1px solid #2a2f33; }
QListWidget::item:selected { background: #2f6fb3; }
QProgressBar { min-height: @40px; font-size: @18pt; }
QLineEdit { min-height: @72px; font-size: @30pt; }
QScrollBar:vertical { width: @40px; }
QComboBox { min-height: @64px; font-size: @20pt; padding: @4px @12px; }
QLabel#kioskCall { font-size: @30pt; font-weight: 700; }
QLabel#kioskShares { font-size: @20pt; color: #c3c9ce; }
QLabel#inspectorTitle { font-size: @24pt; font-weight: 700; }
QLabel#inspectorSubtitle { font-size: @20pt; color: #aab2b9; }
QLabel#inspectorDetails { font-size: @18pt; color: #c3c9ce; font-family: 'DejaVu Sans Mono', monospace; }
QLabel#categoryCount { font-size: @20pt; color: #c3c9ce; }
QLabel#levelsWarning { font-size: @20pt; color: #ffb347; }
QFrame#domainBanner { background: #5a4316; border: 2px solid #ffb347; border-radius: @10px; }
QFrame#domainNote { background: #2a2f33; border: 1px solid #4a5259; border-radius: @10px; }
QFrame#filterNotice { background: #5a4316; border: 2px solid #ffb347; border-radius: @10px; }
QLabel#filterNoticeText { font-size: @20pt; color: #f3ead8; }
QLabel#domainBannerText { font-size: @20pt; color: #f3ead8; }
QFrame#kioskInfo { background: #23384d; border: 2px solid #3a7fc6; border-radius: @10px; }
QFrame#kioskSheetBackdrop { background: rgba(0, 0, 0, 160); }
QFrame#kioskSheet { background: #1f2326; border: 2px solid #4a5259; border-radius: @12px; }
QFrame#kioskTileSheet { background: rgba(27, 30, 33, 238); border: 2px solid #4a5259; border-radius: @12px; }
QListWidget#kioskFiles::item { min-height: @64px; }
QFrame#kioskTileSheet QLabel, QFrame#kioskTileSheet QWidget { font-size: @17pt; }
QFrame#kioskTileSheet QLabel#tileSheetTitle { font-size: @22pt; font-weight: 700; }
QFrame#kioskTileSheet QLabel#tileSheetSubtitle { color: #c3c9ce; }
"""


def kiosk_scale(height: int) -> float:
    """How much smaller the kiosk's text and targets are on a screen this high: 1 at 600 px and more (the
    Jetson's 1024 × 600 display), 0.8 at 480 px (16 pt text, 51-px targets: still readable from a metre and
    larger than a fingertip). The panel's width is shared out separately (``resizeEvent``)."""
    return max(0.8, min(1.0, height / 600))


def kiosk_stylesheet(k: float = 1.0) -> str:
    """The kiosk's style sheet with every "@" size scaled by ``k`` (``kiosk_scale``)."""
    return re.sub(r"@(\d+(?:\.\d+)?)(pt|px)", lambda m: f"{round(float(m[1]) * k, 1):g}{m[2]}",
                  KIOSK_STYLESHEET_TEMPLATE)


KIOSK_STYLESHEET = kiosk_stylesheet(1.0)

KIOSK_SCALE_BAR_PT = 18.0
"""The scale bar's label in the kiosk, read from a metre away like every other text."""

KIOSK_OVERVIEW_SHARE = 0.18
"""The overview's largest share of the slide view's shorter side (it covered ~40% at 1024 × 600)."""
