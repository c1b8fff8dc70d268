"""The only Qt (PySide6 + pyqtgraph), in the spirit of napari's ``_qt``: views that render the Qt-free
``viewer`` state and turn input into calls on it. ``canvas`` shows the slide (view, heatmap painter, loaders),
``widgets`` are the shared widgets drawn from plain values, ``panels`` bind them to one part of the model each,
and ``qt_viewer.QtViewer`` composes what both windows share. ``desktop`` and ``kiosk`` are the two windows,
each composed of those parts (the kiosk is not a subclass of the desktop window, and neither imports the
other). ``worker`` is the one worker abstraction (core generators on QThreads), ``app`` starts a window,
``qtapp`` makes the themed QApplication. Imports the layers below it (never ``train``); only ``cli`` imports
it.
"""

from cellview.gui import compat as _compat  # noqa: F401 - binding work-arounds before any widget exists
