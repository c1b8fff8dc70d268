"""The tissue preview: the mask the analysis would use with the current settings, computed as a job.

The run's own mask (``Started.tissue``) is shown the same way, so the preview and the run never disagree.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from cellview.analysis.tissue import TissueMask, TissueParams, detect_tissue
from cellview.base.errors import CellviewError
from cellview.slides.opening import open_slide
from cellview.viewer.analysis_settings import AnalysisSettings
from cellview.viewer.events import EmitterGroup, Messages
from cellview.viewer.jobs import Job, JobHandle, Runner
from cellview.viewer.slide import SlideState


@dataclass(frozen=True)
class TissuePreview:
    mask: TissueMask


def tissue_task(path: str, mpp_um: float | None, params: TissueParams) -> Iterator[TissuePreview]:
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        yield TissuePreview(detect_tissue(slide, params, slide.mpp.um if slide.mpp else None))
    finally:
        slide.close()


class TissueState:
    """The tissue mask shown over the slide as ``model.tissue``: ``mask`` (None: none yet).

    Event: ``tissue`` (the new ``TissueMask``), from a preview (``preview``) or a run (``show``).
    """

    EVENTS = ("tissue",)

    def __init__(self, slide: SlideState, settings: AnalysisSettings, runner: Runner, messages: Messages) -> None:
        self.events = EmitterGroup(*self.EVENTS)
        self.slide, self.settings, self.runner, self.messages = slide, settings, runner, messages
        self.mask: TissueMask | None = None
        self._ids = itertools.count(1)
        self._id = 0
        self._job: JobHandle | None = None

    def preview(self) -> None:
        """Compute the tissue mask with the current settings (``events.tissue`` when it is ready)."""
        if self.slide.opened is None:
            return
        if self._job is not None:
            self._job.cancel()
        params, mpp, path = self.settings.current().tissue, self.slide.mpp_um(), self.slide.opened.path
        self._id = job_id = next(self._ids)

        def on_item(preview: TissuePreview) -> None:
            if job_id == self._id:
                self.show(preview.mask)

        def on_failed(exc: CellviewError) -> None:
            if job_id == self._id:
                self.messages.error(exc, "Tissue detection failed")

        def on_done() -> None:
            if job_id == self._id:
                self._job = None

        self._job = self.runner(Job("tissue", lambda cancel: tissue_task(path, mpp, params), on_item, on_failed,
                                    on_done))

    def show(self, mask: TissueMask) -> None:
        """Show a mask (a preview's, or the one a run found)."""
        self.mask = mask
        self.events.tissue(mask)

    def close(self) -> None:
        """The slide closed: stop a preview and forget the mask, silently."""
        if self._job is not None:
            self._job.cancel()
        self._id = next(self._ids)
        self._job = None
        self.mask = None
