"""Plain events, Qt-free: how the viewer's parts tell the views (and each other) that something changed.

Each part of ``ViewerModel`` owns an ``EmitterGroup`` (``model.analysis.events.result.connect(callback)``; a
callback gets an ``Event`` with ``type`` and ``value``), so the desktop window, the kiosk and the tests listen
to the same thing without Qt signals, and the parts stay importable without a display. ``Messages`` is the
one group every part reports to: status lines and errors, whoever says them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cellview.base.errors import CellviewError


@dataclass(frozen=True)
class Event:
    """What a callback receives: the event's name and its new value."""

    type: str
    value: Any = None


class EventEmitter:
    """One named event: ``connect(callback)``, ``disconnect(callback)``, ``emit(value)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._callbacks: list[Callable[[Event], Any]] = []

    def connect(self, callback: Callable[[Event], Any]) -> Callable[[Event], Any]:
        if callback not in self._callbacks:
            self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable[[Event], Any] | None = None) -> None:
        if callback is None:
            self._callbacks.clear()
        elif callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, value: Any = None) -> None:
        event = Event(self.name, value)
        for callback in list(self._callbacks):
            callback(event)

    __call__ = emit


class EmitterGroup:
    """A part's events by name (``events.slide``, ``events.result``…)."""

    def __init__(self, *names: str) -> None:
        self.names = names
        for name in names:
            setattr(self, name, EventEmitter(name))

    def __getattr__(self, name: str) -> EventEmitter:  # for type checkers; real ones are set in __init__
        raise AttributeError(name)


class Messages:
    """Status lines and errors, whichever part says them: ``events.status`` (the text) and ``events.error``
    (``(title, CellviewError)``). One group the views listen to; ``ViewerModel.events`` is this group."""

    def __init__(self) -> None:
        self.events = EmitterGroup("status", "error")

    def status(self, message: str) -> None:
        self.events.status(message)

    def error(self, exc: CellviewError, title: str) -> None:
        self.events.error((title, exc))
