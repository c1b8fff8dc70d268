"""Tissue detection on a low-resolution thumbnail, so background tiles are never classified."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cellview.base.errors import SlideError
from cellview.slides.slide import Slide


@dataclass(frozen=True)
class TissueParams:
    """Tissue mask parameters (exposed in the CLI and the viewer's preview).

    ``method``: "saturation" (HSV S channel; robust to white background and pen-free slides)
    or "od" (optical density sum; keeps pale, unsaturated tissue).
    The Otsu threshold is clamped to [``min_threshold``, ``max_threshold``]: on a slide that is
    nearly all tissue Otsu would otherwise split stroma from nuclei; on a blank one it would
    split noise.
    """

    method: str = "saturation"
    mask_mpp_um: float = 4.0
    max_mask_px: int = 4096
    blur_sigma_um: float = 8.0
    min_threshold: float = 0.06
    max_threshold: float = 0.16
    closing_um: float = 16.0
    min_object_um2: float = 5000.0
    min_hole_um2: float = 5000.0

    def __post_init__(self) -> None:
        if self.method not in ("saturation", "od"):
            raise ValueError(f"unknown tissue method {self.method!r}; use 'saturation' or 'od'")


@dataclass(frozen=True)
class TissueMask:
    """Boolean mask where one pixel covers ``downsample`` level-0 pixels in each direction."""

    mask: np.ndarray
    downsample: float
    threshold: float
    method: str

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 optical density −ln((I + 1) / 256) of an RGB uint8 image."""
    return _OD_LUT[rgb]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a sample (histogram over its own range); +inf for fewer than 2 values."""
    if values.size < 2:
        return float("inf")
    values = values.astype(np.float64, copy=False)  # float32 cannot hold 256 bins over a tiny range
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _signal(rgb: np.ndarray, method: str) -> np.ndarray:
    """Per-pixel 'tissueness' in [0, 1]."""
    if method == "saturation":
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        return hsv[..., 1].astype(np.float32) / 255.0
    return np.clip(optical_density(rgb).sum(axis=2) / 3.0, 0.0, 1.0)


def _remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    if min_px <= 1:
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    return keep[labels]


def tissue_mask_from_rgb(rgb: np.ndarray, mask_mpp_um: float, params: TissueParams) -> tuple[np.ndarray, float]:
    """Mask and threshold for an RGB thumbnail whose pixels are ``mask_mpp_um`` wide."""
    signal = _signal(rgb, params.method)
    sigma_px = params.blur_sigma_um / mask_mpp_um
    if sigma_px >= 0.3:
        signal = cv2.GaussianBlur(signal, (0, 0), sigma_px)
    threshold = float(np.clip(otsu_threshold(signal), params.min_threshold, params.max_threshold))
    mask = signal > threshold
    radius = int(round(params.closing_um / mask_mpp_um / 2))
    if radius >= 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    px_area_um2 = mask_mpp_um ** 2
    mask = _remove_small(mask, int(params.min_object_um2 / px_area_um2))
    holes = _remove_small(~mask, int(params.min_hole_um2 / px_area_um2))
    return ~holes, threshold


MASK_SOURCE_FINER = 4.0
"""The mask's pixels are averaged from a level at least this many times finer than the mask (level 0 when the
slide has none), rather than taken from a pyramid level near the mask's scale, within ``MASK_SOURCE_MAX_PX``.

Why: one slide must give one grid whatever the container. A pyramid's coarse levels are its own images: made
by the converter's filter and stored as JPEG with colour at half resolution (YCbCr 4:2:0), so their
saturation is lower at tissue edges. CMU-1's SVS (one level) gave a mask averaged from level 0 and 28 tiles;
its pyramid-TIFF copy gave a mask from its 8× level, 1.9 % less tissue and 27 tiles (a corner tile at 25.6 %
tissue fell under the 25 % rule). From a level 4× finer than the mask both give the same 28 tiles
(bench/format_agreement.py); from 2× finer the TIFF still lost that tile."""

MASK_SOURCE_MAX_PX = 64_000_000
"""The most pixels read for the mask: on a large slide the 4×-finer level would cost seconds (a 60k × 50k slide:
750 Mpx, about 10× the tissue step), so the finest level that fits is read, at worst the level nearest the mask
(as before). A borderline tile of a large slide may then still differ between containers; a whole slide of this
size has thousands of tiles."""


def mask_source_level(slide: Slide, downsample: float) -> int:
    """The level the mask is averaged from (see ``MASK_SOURCE_FINER`` and ``MASK_SOURCE_MAX_PX``)."""
    nearest = slide.best_level_for_downsample(downsample)
    finest = slide.best_level_for_downsample(downsample / MASK_SOURCE_FINER)
    for level in range(finest, nearest + 1):
        w, h = slide.level_dimensions[level]
        if not slide.is_skipped(level) and w * h <= MASK_SOURCE_MAX_PX:
            return level
    return nearest


def mask_thumbnail(slide: Slide, downsample: float) -> np.ndarray:
    """The whole slide shrunk ``downsample`` times (area average) from ``mask_source_level``, falling back to finer
    levels when one is unreadable (as ``Slide.thumbnail``)."""
    w0, h0 = slide.dimensions
    out_size = (max(1, round(w0 / downsample)), max(1, round(h0 / downsample)))
    error: Exception | None = None
    for level in range(mask_source_level(slide, downsample), -1, -1):
        if slide.is_skipped(level):
            continue
        try:
            return slide.read_level_scaled(level, out_size)  # the slide's chunked two-handle reader
        except SlideError as exc:
            error = exc
    if error is not None:
        raise error
    return slide.thumbnail(max(out_size))


def detect_tissue(slide: Slide, params: TissueParams | None = None, mpp_um: float | None = None) -> TissueMask:
    """Tissue mask of the whole slide at about ``params.mask_mpp_um`` per pixel.

    ``mpp_um`` is the slide's level-0 pixel size; without it (scale unknown) the mask is made
    on a thumbnail of at most 1024 px and sizes are taken as if pixels were 1 µm.
    """
    params = params or TissueParams()
    w0, h0 = slide.dimensions
    if mpp_um:
        downsample = max(1.0, params.mask_mpp_um / mpp_um, max(w0, h0) / params.max_mask_px)
    else:
        downsample = max(1.0, max(w0, h0) / 1024)
    thumb = mask_thumbnail(slide, downsample)
    # Actual scale of the thumbnail (rounding of its size).
    downsample = w0 / thumb.shape[1]
    mask_mpp = (mpp_um or 1.0) * downsample
    mask, threshold = tissue_mask_from_rgb(thumb, mask_mpp, params)
    return TissueMask(mask=mask, downsample=downsample, threshold=threshold, method=params.method)
