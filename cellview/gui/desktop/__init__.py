"""The desktop viewer: a main window with the slide in the middle, a side panel of cards, menus, a status bar,
dialogs (pixel size, exports, shortcuts) and the labelling tools. It composes the shared canvas and panels over
one ``ViewerModel``; the kiosk composes the same parts differently and imports nothing from here.
"""

from cellview.gui.desktop.window import MainWindow

__all__ = ["MainWindow"]
