"""The malignant regions outlined over the shown result, and the sentence beside them.

Noisy predictions make thousands of regions (seconds), so they are computed as a job, one at a time, and
only when the result, its progress or the confidence threshold changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from cellview.analysis.model_spec import CATEGORIES
from cellview.analysis.morphology import Region, malignant_regions
from cellview.analysis.results import (
    AnalysisResult,
    plural,
)
from cellview.viewer.analysis import AnalysisRun
from cellview.viewer.events import EmitterGroup, Messages
from cellview.viewer.jobs import JobHandle, LatestJob, Runner
from cellview.viewer.overlay import OverlayState


def regions_task(result: AnalysisResult, min_confidence: float) -> Iterator[list[Region]]:
    """Malignant regions off the main thread: noisy predictions make thousands of them (seconds).

    ``result`` must be a snapshot nobody writes to any more (its arrays copied).
    """
    yield malignant_regions(result, min_confidence)


def regions_note(result: AnalysisResult, regions: list[Region], min_confidence: float) -> str:
    """The sentence beside the region outlines. Regions join in-domain tiles only, so when none is found
    it says whether out-of-domain tiles were called malignant (the call on tissue the model never saw
    is no finding) instead of claiming that no tile is malignant."""
    where = f"malignant at ≥ {min_confidence:.0%} confidence" if min_confidence > 0 else "malignant"
    malignant = result.pred_category == CATEGORIES.index("malignant")
    sure = np.nan_to_num(result.confidence, nan=-1.0) >= min_confidence
    n_out = int((result.out_of_domain & malignant & sure).sum())
    some_out = result.has_domain and bool(result.out_of_domain.any())
    if regions:
        text = f"{plural(len(regions), 'region')} of tiles {where}; largest {regions[0].label()}."
    elif result.n_done and some_out and not result.in_domain.any():
        text = "No region: every classified tile is out of the model's domain."
    elif n_out:
        text = f"No region: no in-domain tile is {where}."
    else:
        text = f"No region: no tile is {where}."
    if n_out:
        text += f" {plural(n_out, 'out-of-domain tile')} called {where} {'is' if n_out == 1 else 'are'} left out."
    elif some_out:
        text += " Regions join in-domain tiles only."
    return text


class Regions:
    """The malignant regions over the shown result as ``model.regions`` (module docstring): ``shown`` is the list
    on screen. Event: ``regions`` (the new list; [] when none are shown)."""

    EVENTS = ("regions",)

    def __init__(self, analysis: AnalysisRun, overlay: OverlayState, runner: Runner, messages: Messages) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.analysis, self.overlay, self.runner, self.messages = analysis, overlay, runner, messages
        self.shown: list[Region] = []
        self._shown_key: tuple | None = None  # (id(result), n_done, confidence) of self.shown
        self._key: tuple | None = None  # what the job running (or the last one) computes
        self._latest = LatestJob(runner)

    @property
    def busy(self) -> bool:
        return self._latest.busy

    @property
    def job(self) -> JobHandle | None:
        """The handle of the regions job running (None when none runs)."""
        return self._latest.handle

    @property
    def confidence(self) -> float | None:
        """The confidence threshold the shown regions were built at (None when none are shown)."""
        return None if self._shown_key is None else self._shown_key[2]

    def note(self) -> str:
        """What the region outlines show, or why there are none ("" without a result or outlines off)."""
        result = self.analysis.shown_result()
        settings = self.overlay.settings
        if result is None or not settings.show_regions or result.grid.whole_image:
            return ""
        return regions_note(result, self.shown, settings.min_confidence)

    def update(self) -> None:
        """Malignant regions of the shown result at the overlay's confidence, when they are shown.

        Computed as a job, one at a time (a request during one follows it); skipped when neither
        the result, its progress nor the threshold changed.
        """
        result = self.analysis.shown_result() if self.overlay.settings.show_regions else None
        if result is None or result.grid.whole_image:
            self.clear()
            return
        min_conf = self.overlay.settings.min_confidence
        key = (id(result), result.n_done, min_conf)
        if self._key == key:
            return
        if self._latest.busy:
            self._latest.again = True
            return
        self._key = key
        snapshot = replace(result, probs=result.probs.copy(), state=result.state.copy())

        def on_item(regions: list[Region]) -> None:
            self.shown, self._shown_key = regions, key
            self.events.regions(regions)

        self._latest.start("regions", lambda cancel: regions_task(snapshot, min_conf), on_item,
                           lambda exc: self.messages.status(f"Regions failed: {exc.message}"), self.update)

    def for_export(self, result: AnalysisResult) -> tuple[list[Region], float]:
        """The regions on screen when they are current, else computed now at the overlay's threshold."""
        conf = self.overlay.settings.min_confidence
        if self.overlay.settings.show_regions and self._shown_key == (id(result), result.n_done, conf):
            return self.shown, conf
        return malignant_regions(result, conf), conf

    def clear(self, emit: bool = True) -> None:
        """No regions (``events.regions([])`` when ``emit``); what a job still running delivers is ignored."""
        self._key = None
        self._latest.forget()
        self.shown, self._shown_key = [], None
        if emit:
            self.events.regions([])

    def cancel(self) -> None:
        """Stop the regions job (its slide closed) and forget the regions, silently."""
        self._latest.cancel()
        self.clear(emit=False)
