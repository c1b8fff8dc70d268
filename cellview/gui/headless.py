"""Helpers for driving the real window from scripts (screenshots, benchmarks) without a user."""

from __future__ import annotations

import time
from typing import Any


def wait_for(signal: Any, timeout_s: float) -> bool:
    """Run the event loop until ``signal`` fires or ``timeout_s`` passes; True if it fired."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    fired: list[int] = []

    def fire(*_args: object) -> None:
        fired.append(1)
        loop.quit()

    signal.connect(fire)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    signal.disconnect(fire)
    return bool(fired)


def settle(app: Any, seconds: float) -> None:
    """Process events for a while (layouts, deferred paints, worker signals)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)
