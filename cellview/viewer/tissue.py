"""The tissue preview: the mask the analysis would use with the current settings, computed as a job.

The run's own mask (``Started.tissue``) is shown the same way, so the preview and the run never disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cellview.analysis.tissue import TissueMask, TissueParams, detect_tissue
from cellview.slides.slide import open_slide


@dataclass(frozen=True)
class TissuePreview:
    mask: TissueMask


def tissue_task(path: str, mpp_um: float | None, params: TissueParams) -> Iterator[TissuePreview]:
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        yield TissuePreview(detect_tissue(slide, params, slide.mpp.um if slide.mpp else None))
    finally:
        slide.close()
