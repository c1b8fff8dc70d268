"""Persistent settings (recent files, last export folder, entered pixel sizes) via QSettings."""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

MAX_RECENT = 10


def settings() -> QSettings:
    """$CELLVIEW_SETTINGS_FILE (tests, kiosks) or the platform's per-user location."""
    path = os.environ.get("CELLVIEW_SETTINGS_FILE")
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "cellview", "cellview")


def _list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]  # type: ignore[union-attr]


def recent_files() -> list[str]:
    return [p for p in _list(settings().value("recent_files")) if os.path.exists(p)]


def add_recent_file(path: str) -> list[str]:
    path = os.path.abspath(path)
    files = [path] + [p for p in recent_files() if p != path]
    settings().setValue("recent_files", files[:MAX_RECENT])
    return files[:MAX_RECENT]


def get(key: str, default: object = None) -> object:
    return settings().value(key, default)


def put(key: str, value: object) -> None:
    settings().setValue(key, value)


def user_models() -> list[str]:
    return [p for p in _list(settings().value("user_models")) if os.path.exists(p)]


def add_user_model(path: str) -> None:
    path = os.path.abspath(path)
    settings().setValue("user_models", [path] + [p for p in user_models() if p != path][:9])


def recorded_mpp(fingerprint: str) -> float | None:
    value = settings().value(f"mpp/{fingerprint}")
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def record_mpp(fingerprint: str, mpp_um: float) -> None:
    settings().setValue(f"mpp/{fingerprint}", float(mpp_um))


class QSettingsStore:
    """These functions as the viewer model's ``SettingsStore``."""

    get = staticmethod(get)
    put = staticmethod(put)
    recent_files = staticmethod(recent_files)
    add_recent_file = staticmethod(add_recent_file)
    recorded_mpp = staticmethod(recorded_mpp)
    record_mpp = staticmethod(record_mpp)


STORE = QSettingsStore()
