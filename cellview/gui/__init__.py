"""The only Qt (PySide6 + pyqtgraph): the desktop window and the kiosk window, each composed of the same
panels, views and controllers over the Qt-free ``viewer`` state (the kiosk is not a subclass of the
desktop window), one worker abstraction that runs core generators off the main thread and returns
results as signals, and the widgets both windows share. Imports everything below it except ``train``
and ``cli``; nothing but ``cli`` imports it.
"""

from cellview.gui import compat as _compat  # noqa: F401 - binding work-arounds before any widget exists
