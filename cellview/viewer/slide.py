"""The open slide: opening it off the UI thread, its scale, the recent slides and where dialogs start.

Opening is a job (``open_task``: the cheapest good preview first, then a sharper base image) so a bad
file never replaces the open slide; a slide that does not say its pixel size gets one from the user
(remembered per slide) or is classified as one image (``WHOLE_IMAGE``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cellview.slides.slide import SlideInfo, open_slide, slide_display_name

WHOLE_IMAGE = "whole-image"
"""``ViewerModel.mpp_choice`` when a slide of unknown scale is classified as one image."""

THUMBNAIL_PX = 2048
"""Longest side of the base image drawn under the pyramid tiles (and used for PNG export)."""

OVERVIEW_PX = 200


# ----------------------------------------------------------------------------- opening a slide


@dataclass(frozen=True)
class BaseImage:
    """The thumbnail in the forms a view draws without converting (prepared off the UI thread)."""

    bgra: np.ndarray  # QImage.Format_RGB32 memory layout: a QPixmap copy, no conversion
    overview_rgb: np.ndarray

    @classmethod
    def from_rgb(cls, rgb: np.ndarray) -> BaseImage:
        h, w = rgb.shape[:2]
        k = OVERVIEW_PX / max(h, w)
        small = cv2.resize(rgb, (max(1, int(w * k)), max(1, int(h * k))), interpolation=cv2.INTER_AREA)
        return cls(np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)), small)


@dataclass(frozen=True)
class Opened:
    """Everything the viewer needs about a slide, read once off the main thread."""

    path: str
    info: SlideInfo
    thumbnail: np.ndarray
    base: BaseImage
    vendor: str
    is_plain_image: bool

    @property
    def name(self) -> str:
        return slide_display_name(Path(self.path))


@dataclass(frozen=True)
class SharperThumbnail:
    """The full-size base image, after a quick preview was shown."""

    path: str
    thumbnail: np.ndarray
    base: BaseImage


def _quick_preview(slide: Any) -> np.ndarray | None:
    """The scanner's own small thumbnail (no pixel decoding of the pyramid), if it has the slide's shape."""
    get = getattr(slide, "associated_image", None)
    try:
        img = get("thumbnail") if get else None
    except Exception:  # noqa: BLE001 - a broken associated image only costs the preview
        return None
    if img is None:
        return None
    w0, h0 = slide.dimensions
    return img if abs(img.shape[1] / img.shape[0] - w0 / h0) < 0.02 * (w0 / h0) else None


def open_task(path: str, mpp_um: float | None) -> Iterator[Opened | SharperThumbnail]:
    """Opened with the cheapest good preview, then the sharper base image if the preview was small.

    Preview: the scanner's thumbnail, else the whole coarsest usable pyramid level when it is
    small (one read, no resampling of a finer level), else a THUMBNAIL_PX thumbnail.
    """
    slide = open_slide(path, mpp_um=mpp_um)
    try:
        info = slide.info()
        preview = _quick_preview(slide)
        if preview is None:
            coarsest_px = max(slide.level_dimensions[info.usable_levels[-1]])
            preview = slide.thumbnail(min(THUMBNAIL_PX, coarsest_px) if coarsest_px <= 2 * THUMBNAIL_PX else THUMBNAIL_PX)
        yield Opened(str(slide.path), info, preview, BaseImage.from_rgb(preview), slide.vendor, slide.vendor == "image")
        if max(preview.shape[:2]) < 0.75 * min(THUMBNAIL_PX, max(slide.dimensions)):
            sharp = slide.thumbnail(THUMBNAIL_PX)
            yield SharperThumbnail(str(slide.path), sharp, BaseImage.from_rgb(sharp))
    finally:
        slide.close()


@dataclass(frozen=True)
class RecentSlide:
    path: str
    name: str  # the file name, or the DICOM folder's name
