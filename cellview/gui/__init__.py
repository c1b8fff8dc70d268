"""The PySide6 + pyqtgraph desktop viewer over the Qt-free core (only this package imports Qt)."""

from cellview.gui import compat as _compat  # noqa: F401 - binding work-arounds before any widget exists
