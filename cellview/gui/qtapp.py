"""The QApplication with CellView's theme: one place for the viewer, the kiosk, tests and scripts.

Its own module so that ``gui.app`` (which starts the kiosk) and ``gui.kiosk`` (which needs an
application) do not import each other.
"""

from __future__ import annotations

import sys


def make_app(argv: list[str] | None = None):
    """The QApplication with CellView's theme (reused by tests, benchmarks and the screenshot script)."""
    from PySide6.QtWidgets import QApplication

    from cellview.gui.style import apply_theme

    app = QApplication.instance() or QApplication(argv or [sys.argv[0]])
    # Worker threads run Python between their GIL-free calls (OpenSlide, ONNX Runtime, OpenCV); a
    # shorter switch interval bounds how long the UI thread waits for the GIL (default 5 ms).
    sys.setswitchinterval(0.001)
    if not app.property("cellview_themed"):  # restyling a live application can crash Qt
        app.setApplicationName("CellView")
        app.setOrganizationName("cellview")
        apply_theme(app)
        app.setProperty("cellview_themed", True)
    return app
