"""Work-arounds for defects of specific Qt bindings, applied once when the GUI package is imported.

PySide6 6.12.0 on CPython < 3.12 drops references to the ``None``/``True``/``False`` singletons:
each ``SignalInstance.emit()`` called from Python loses one reference to ``True``, and each
call of a Python slot from a C++ signal loses one to ``None``. A viewer makes thousands of
such calls a minute and the interpreter aborts ("none_dealloc" / "bool_dealloc") once a count
reaches zero. CPython 3.12 made these singletons immortal; on older interpreters we give them
a reference count no program can exhaust, which is what 3.12 does. Nothing else is touched.
"""

from __future__ import annotations

import ctypes
import sys

_IMMORTAL_REFS = 1 << 40


def singleton_refs_leak() -> bool:
    """Detect the defect instead of trusting version numbers (both leaks come with the same releases)."""
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        ping = Signal()

    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(8):
        probe.ping.emit()
    return sys.getrefcount(True) < before - 4


def protect_singletons() -> bool:
    """Make None/True/False effectively immortal where the binding leaks them; True if applied."""
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython" or not singleton_refs_leak():
        return False
    for obj in (None, True, False):
        # ob_refcnt is the first field of every CPython object.
        ctypes.c_ssize_t.from_address(id(obj)).value += _IMMORTAL_REFS
    return True


APPLIED = protect_singletons()
