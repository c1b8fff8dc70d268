"""What the analysis is doing (the progress bar and the line under it) and the pyramid's skipped levels.

Both windows show these: the desktop in its Analysis card, the kiosk under the call.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtWidgets import QProgressBar

from cellview.analysis.results import plural
from cellview.gui.widgets.cards import text_label
from cellview.slides.levels import describe_skipped
from cellview.viewer.analysis import Progress
from cellview.viewer.events import Event
from cellview.viewer.model import ViewerModel


def format_eta(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class AnalysisStatus:
    """``progress``, ``rate_label`` (tiles/s, ETA, the cache) and ``levels_label`` (skipped pyramid levels)."""

    def __init__(self, model: ViewerModel) -> None:
        self.model = model
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.rate_label = text_label("", "hint", wrap=False)
        self.levels_label = text_label("", "levelsWarning")
        self.levels_label.setVisible(False)
        model.analysis.events.progress.connect(self._on_progress)
        model.slide.events.slide.connect(self._on_slide)
        model.slide.events.slide_image.connect(lambda e: self._show_levels())

    def show_cancelling(self) -> None:
        self.progress.setFormat("Cancelling… %v / %m tiles")

    def _on_slide(self, event: Event) -> None:
        if event.value is None:
            self.levels_label.setVisible(False)
        else:
            self._show_levels()

    def _show_levels(self) -> None:
        opened = self.model.slide.opened
        if opened is None:
            return
        skipped = describe_skipped(opened.info.skipped_levels, reasons=False)
        if skipped:
            why = describe_skipped(opened.info.skipped_levels)
            self.levels_label.setText(f"Pyramid {why}. They are never read: tiles and the view use the nearest "
                                      "good finer level.")
        self.levels_label.setVisible(bool(skipped))

    def _on_progress(self, event: Event) -> None:
        p: Progress = event.value
        if p.phase == "preparing":
            self.progress.setRange(0, 0)
            self.progress.setFormat("Preparing…")
            self.rate_label.setText("Loading model and finding tissue…")
        elif p.phase == "running":
            self.progress.setRange(0, max(1, p.total))
            self.progress.setValue(p.done)
            self.progress.setFormat("%v / %m tiles")
            if p.done == 0:
                self.rate_label.setText("Found in the result cache" if p.from_cache
                                        else f"{plural(p.total, 'tissue tile')} to classify")
            elif p.tiles_per_s == 0:  # the first item of a resumed run: the tiles done before Cancel
                self.rate_label.setText(f"Going on from the {plural(p.done, 'tile')} classified before Cancel")
            else:
                self.rate_label.setText(f"{p.tiles_per_s:.1f} tiles/s  ·  ETA {format_eta(p.eta_s)}  ·  "
                                        f"{format_eta(p.elapsed_s)} elapsed")
        elif p.phase in ("done", "cancelled"):
            self.progress.setRange(0, max(1, p.total))
            self.progress.setValue(p.done)
            self.progress.setFormat(f"{'Done' if p.phase == 'done' else 'Cancelled'}: %v / %m tiles")
            if p.from_cache:
                self.rate_label.setText("Loaded from the result cache (same slide, model and settings)")
            elif p.tiles_per_s:
                self.rate_label.setText(f"{p.tiles_per_s:.1f} tiles/s  ·  {format_eta(p.elapsed_s)} total")
        else:  # idle, failed
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("idle")
            self.rate_label.setText("")
