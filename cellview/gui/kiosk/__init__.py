"""`cellview --kiosk`: the unattended, full-screen, touch-first station. Its window composes the same canvas and
panels as the desktop viewer (it is not a subclass of it) with the kiosk's own pages, cards, touch sheets, idle
screen and exit PIN; the rules that must hold without an operator live in the Qt-free ``cellview.viewer.kiosk``.
"""

from cellview.gui.kiosk.launch import build_kiosk, run_kiosk, settings_from_args
from cellview.gui.kiosk.window import KioskWindow

__all__ = ["KioskWindow", "build_kiosk", "run_kiosk", "settings_from_args"]
