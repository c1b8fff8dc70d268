"""The malignant regions outlined over the shown result, and the sentence beside them.

Noisy predictions make thousands of regions (seconds), so they are computed as a job, one at a time, and
only when the result, its progress or the confidence threshold changed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cellview.analysis.model import CATEGORIES
from cellview.analysis.morphology import Region, malignant_regions
from cellview.analysis.results import (
    AnalysisResult,
    plural,
)


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
