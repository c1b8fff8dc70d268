"""Undo and redo for labelling (Qt-free): every change to a slide's labelled regions is one step back.

The labels of a slide are an ordered list of regions (``labels.LabelRegion``; later ones win), so a
step is simply the list before and after, with words for the menu ("Undo label 12 tiles malignant").
The viewer's labelling state keeps one ``LabelHistory`` per open slide, records each change with
``record`` and saves whatever ``undo`` / ``redo`` give back, exactly as it saves a change; opening another
slide starts a new history. Bounded, so a day of labelling does not grow without end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cellview.lab.labels import LabelRegion

MAX_STEPS = 200


@dataclass(frozen=True)
class Step:
    """One change: the regions before and after it, and what it did, in words."""

    before: tuple[LabelRegion, ...]
    after: tuple[LabelRegion, ...]
    text: str


class LabelHistory:
    """The undo and redo stacks of one slide's labels."""

    def __init__(self, max_steps: int = MAX_STEPS) -> None:
        self.max_steps = max_steps
        self._undo: list[Step] = []
        self._redo: list[Step] = []

    def record(self, before: Sequence[LabelRegion], after: Sequence[LabelRegion], text: str) -> None:
        """A change was made (a new change forgets what could be redone); no change, no step."""
        before, after = tuple(before), tuple(after)
        if before == after:
            return
        self._undo.append(Step(before, after, text))
        del self._undo[: -self.max_steps]
        self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo_text(self) -> str:
        """'Undo label 12 tiles malignant', or '' when there is nothing to undo (for the menu)."""
        return f"Undo {self._undo[-1].text}" if self._undo else ""

    def redo_text(self) -> str:
        return f"Redo {self._redo[-1].text}" if self._redo else ""

    def undo(self) -> tuple[LabelRegion, ...] | None:
        """The regions before the last change (None: nothing to undo)."""
        if not self._undo:
            return None
        step = self._undo.pop()
        self._redo.append(step)
        return step.before

    def redo(self) -> tuple[LabelRegion, ...] | None:
        """The regions after the last undone change (None: nothing to redo)."""
        if not self._redo:
            return None
        step = self._redo.pop()
        self._undo.append(step)
        return step.after

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()
