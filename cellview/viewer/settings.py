"""Where the viewer remembers things between sessions: recent slides, dialog folders, entered pixel sizes.

A protocol, so the viewer's state stays Qt-free: the GUI passes its QSettings-backed store
(``gui.settings.STORE``), tests and scripts a ``MemoryStore`` that forgets on exit.
"""

from __future__ import annotations

import os
from typing import Protocol


class SettingsStore(Protocol):
    """Where the viewer remembers things between sessions (QSettings in the GUI)."""

    def get(self, key: str, default: object = None) -> object: ...
    def put(self, key: str, value: object) -> None: ...
    def recent_files(self) -> list[str]: ...
    def add_recent_file(self, path: str) -> list[str]: ...
    def recorded_mpp(self, fingerprint: str) -> float | None: ...
    def record_mpp(self, fingerprint: str, mpp_um: float) -> None: ...


class MemoryStore:
    """A ``SettingsStore`` that forgets on exit (tests, scripts)."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.recent: list[str] = []
        self.mpp: dict[str, float] = {}

    def get(self, key: str, default: object = None) -> object:
        return self.values.get(key, default)

    def put(self, key: str, value: object) -> None:
        self.values[key] = value

    def recent_files(self) -> list[str]:
        return [p for p in self.recent if os.path.exists(p)]

    def add_recent_file(self, path: str) -> list[str]:
        path = os.path.abspath(path)
        self.recent = [path] + [p for p in self.recent if p != path][:9]
        return list(self.recent)

    def recorded_mpp(self, fingerprint: str) -> float | None:
        return self.mpp.get(fingerprint)

    def record_mpp(self, fingerprint: str, mpp_um: float) -> None:
        self.mpp[fingerprint] = float(mpp_um)
