"""Nuclei per tile and malignant regions: the cell-level view a pathologist uses (Qt-free core).

Nuclei: colour deconvolution (optical density with a standard H&E stain matrix) → the
haematoxylin channel → Gaussian smoothing → Otsu threshold over the tissue pixels → clean-up
(opening, hole filling, small-object removal) → touching nuclei split by distance transform +
marker watershed → per-nucleus area, circularity, eccentricity → per-tile summary.
Only NumPy and OpenCV are used, so this adds no runtime dependency.

Regions: 8-connected components of the grid cells whose tile is malignant with at least the
viewer's confidence (and in the model's domain), as exact rectilinear polygons (with holes) in
level-0 pixels, ranked by area.

Sizes are given in µm and converted with the patch's µm per pixel; with no pixel size the
defaults assume 0.5 µm/px, areas are reported in px² and ``area_unit`` says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from cellview.analysis.results import AnalysisResult, plural
from cellview.analysis.results import TileNuclei as TileNuclei  # re-exported; it lives in results (no import cycle)
from cellview.analysis.tiling import cell_edges
from cellview.analysis.tissue import optical_density, otsu_threshold

if TYPE_CHECKING:
    from cellview.analysis.tiling import TileGrid
    from cellview.slides.slide import Slide

# ----------------------------------------------------------------------------- stain matrix

# Ruifrok & Johnston (2001) stain OD vectors, one row per stain (R, G, B), as in
# scikit-image's ``rgb_from_hed``: haematoxylin, eosin, DAB.
HED_STAIN_MATRIX: tuple[tuple[float, float, float], ...] = (
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)

_DEFAULT_MPP_UM = 0.5  # size defaults in pixels when the scale is unknown (a 20x scan)


def stain_unmixing_matrix(stain_matrix: Sequence[Sequence[float]] = HED_STAIN_MATRIX) -> np.ndarray:
    """(3, 3) float32 matrix M with ``concentrations = OD @ M`` (rows of the input normalised)."""
    m = np.asarray(stain_matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"stain matrix must be 3 × 3 (one OD row per stain), got {m.shape}")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    if np.any(norms <= 0):
        raise ValueError("stain vectors must be non-zero")
    return np.linalg.inv(m / norms).astype(np.float32)


def separate_stains(rgb: np.ndarray, stain_matrix: Sequence[Sequence[float]] = HED_STAIN_MATRIX) -> np.ndarray:
    """(H, W, 3) float32 stain concentrations (haematoxylin, eosin, DAB for the default matrix)."""
    od = optical_density(rgb)
    return (od.reshape(-1, 3) @ stain_unmixing_matrix(stain_matrix)).reshape(od.shape)


def haematoxylin(rgb: np.ndarray, stain_matrix: Sequence[Sequence[float]] = HED_STAIN_MATRIX) -> np.ndarray:
    """(H, W) float32 haematoxylin concentration (OD units), negatives clipped to 0."""
    od = optical_density(rgb)
    m = stain_unmixing_matrix(stain_matrix)
    h = od[..., 0] * m[0, 0] + od[..., 1] * m[1, 0] + od[..., 2] * m[2, 0]
    return np.maximum(h, 0.0, out=h)


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class NucleiParams:
    """Nucleus segmentation settings; sizes in µm (converted with the patch's µm per pixel)."""

    stain_matrix: tuple[tuple[float, float, float], ...] = HED_STAIN_MATRIX
    smooth_sigma_um: float = 0.5
    min_threshold: float = 0.35  # Otsu never goes below this haematoxylin OD (nuclei-free tiles)
    tissue_od: float = 0.15  # pixels with summed OD below this are glass, left out of Otsu
    open_radius_um: float = 0.5
    min_area_um2: float = 8.0
    max_area_um2: float = 400.0  # larger blobs are stain/fold artefacts, not nuclei
    max_eosin_deficit: float = 0.25  # objects with mean eosin OD below −this are blue/green ink, not nuclei
    min_solidity: float = 0.8  # area / convex-hull area; ragged fragments (folds, smears) are not nuclei
    peak_separation_um: float = 2.5  # two watershed seeds closer than this are one nucleus
    min_peak_um: float = 0.75  # seeds must be this far inside the mask


# ----------------------------------------------------------------------------- per tile


@dataclass(frozen=True, eq=False)
class NucleiMeasurement:
    """Nuclei of one tile. Areas in µm² (``area_unit == "um2"``) or px² when the scale is unknown.

    ``contours`` are (K, 2) int32 arrays of (x, y) tile-pixel coordinates (pixel centres), one
    per nucleus, when asked for; ``contours_level0`` maps them to the slide.
    """

    count: int
    density_per_mm2: float  # nuclei per mm² of tile area; NaN when the scale is unknown
    mean_area: float
    median_area: float
    mean_circularity: float  # 4πA/P², 1 for a disc
    mean_eccentricity: float  # 0 for a disc, → 1 for a line
    area_unit: str  # "um2" or "px2"
    mpp_um: float | None  # µm per tile pixel
    tile_shape: tuple[int, int]
    threshold: float  # haematoxylin OD used
    areas: np.ndarray = field(repr=False)  # per nucleus, in area_unit
    centroids: np.ndarray = field(repr=False)  # (N, 2) x, y tile px
    contours: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    @property
    def scale_unknown(self) -> bool:
        return self.mpp_um is None

    def as_row(self) -> tuple[float, ...]:
        """The values stored per tile, in ``TileNuclei.FIELDS`` order."""
        return (float(self.count), self.density_per_mm2, self.mean_area, self.median_area,
                self.mean_circularity, self.mean_eccentricity)

    def contours_level0(self, origin_xy: tuple[float, float], l0_per_px: float | tuple[float, float]
                        ) -> tuple[np.ndarray, ...]:
        """Contours as (K, 2) float64 level-0 coordinates of a tile at ``origin_xy``."""
        if self.contours is None:
            raise ValueError("contours were not requested (want_contours=False)")
        return tuple(tile_to_level0(c, origin_xy, l0_per_px) for c in self.contours)

    def summary(self) -> str:
        unit = "µm²" if self.area_unit == "um2" else "px² (scale unknown)"
        dens = f", {self.density_per_mm2:.0f}/mm²" if math.isfinite(self.density_per_mm2) else ""
        if not self.count:
            return "0 nuclei"
        return (f"{self.count} nuclei{dens}; area mean {self.mean_area:.1f}, median {self.median_area:.1f} {unit}; "
                f"circularity {self.mean_circularity:.2f}, eccentricity {self.mean_eccentricity:.2f}")


def tile_to_level0(points: np.ndarray, origin_xy: tuple[float, float],
                   l0_per_px: float | tuple[float, float]) -> np.ndarray:
    """(K, 2) tile-pixel (x, y) → level-0 coordinates (pixel centres map to their centres)."""
    sx, sy = (l0_per_px, l0_per_px) if np.isscalar(l0_per_px) else l0_per_px  # type: ignore[misc]
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.column_stack([origin_xy[0] + (p[:, 0] + 0.5) * sx, origin_xy[1] + (p[:, 1] + 0.5) * sy])


def _px(um: float, mpp: float) -> float:
    return um / mpp


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return (mask | (flood[1:-1, 1:-1] == 0)).astype(np.uint8)


def nuclei_mask(rgb: np.ndarray, mpp_um: float | None = None, params: NucleiParams | None = None
                ) -> tuple[np.ndarray, float]:
    """(H, W) uint8 0/1 nuclei foreground before splitting, and the threshold used."""
    params = params or NucleiParams()
    return _nuclei_mask(optical_density(rgb), stain_unmixing_matrix(params.stain_matrix), mpp_um, params)


def _nuclei_mask(od: np.ndarray, m: np.ndarray, mpp_um: float | None, params: NucleiParams) -> tuple[np.ndarray, float]:
    mpp = mpp_um or _DEFAULT_MPP_UM
    h = od[..., 0] * m[0, 0] + od[..., 1] * m[1, 0] + od[..., 2] * m[2, 0]
    np.maximum(h, 0.0, out=h)
    sigma = _px(params.smooth_sigma_um, mpp)
    if sigma >= 0.3:
        h = cv2.GaussianBlur(h, (0, 0), sigma)
    tissue = od.sum(axis=2) > params.tissue_od
    thr = max(otsu_threshold(h[tissue]) if tissue.any() else float("inf"), params.min_threshold)
    mask = (h > thr).astype(np.uint8)
    r_open = _px(params.open_radius_um, mpp)
    if r_open >= 0.75:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disk(r_open))
    return _fill_holes(mask), thr


def split_nuclei(mask: np.ndarray, mpp_um: float | None = None, params: NucleiParams | None = None) -> np.ndarray:
    """(H, W) int32 labels (0 = background): touching nuclei split by distance transform + watershed."""
    params = params or NucleiParams()
    mpp = mpp_um or _DEFAULT_MPP_UM
    n_cc, cc = cv2.connectedComponents(mask, connectivity=8)
    labels = np.zeros(mask.shape, np.int32)
    if n_cc <= 1:
        return labels
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dist_s = cv2.GaussianBlur(dist, (0, 0), 1.0) * mask
    sep = _px(params.peak_separation_um, mpp)
    peaks = (dist_s >= cv2.dilate(dist_s, _disk(sep / 2))) & (dist >= max(1.0, _px(params.min_peak_um, mpp)))
    # every component gets at least one seed: its deepest point
    comp_max = np.zeros(n_cc, np.float32)
    np.maximum.at(comp_max, cc.ravel(), dist_s.ravel())
    seeded = np.zeros(n_cc, bool)
    seeded[cc[peaks]] = True
    missing = ~seeded
    missing[0] = False
    if missing.any():
        peaks |= missing[cc] & (dist_s >= comp_max[cc]) & (mask > 0)
    n_markers, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    labels = cc.astype(np.int32)
    if n_markers - 1 <= n_cc - 1:  # one seed per component: nothing to split
        return labels
    seeds_per_cc = np.bincount(cc[markers > 0], minlength=n_cc)
    multi = seeds_per_cc > 1
    multi[0] = False
    # only components with several seeds are flooded, all at once inside their bounding box
    region = multi[cc]
    ys, xs = np.nonzero(region)
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    reg = region[sl]
    flooded = flood_from_seeds(dist_s[sl], reg, np.where(reg, markers[sl], 0))
    labels[sl][reg] = n_cc + flooded[reg]
    return labels


def flood_from_seeds(depth: np.ndarray, region: np.ndarray, seeds: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Marker watershed of ``-depth`` inside ``region`` (immersion by levels of ``step``).

    Each level lets every basin grow (geodesic 3 × 3 dilation) into the pixels at least that
    deep until nothing changes, so basins meet where the depth is lowest (the neck between
    touching nuclei). OpenCV's own watershed floods by colour gradient, not by height.
    """
    labels = seeds.astype(np.float32)
    big = np.float32(2**24)
    low = np.where(labels > 0, labels, big)  # the same labels, unlabelled = big (for the minimum)
    kernel = np.ones((3, 3), np.uint8)
    free = region & (labels == 0)  # neither labelled nor a tie yet
    top = float(depth[region].max()) if region.any() else 0.0
    for level in np.arange(top, -step, -step):
        allowed = free & (depth >= level) if level > 0 else free.copy()
        while True:
            hi = cv2.dilate(labels, kernel)
            new = allowed & (hi > 0)
            if not new.any():
                break
            lo = cv2.erode(low, kernel)
            tie = new & (lo != hi)  # two basins arrive together: decided after the flood
            new ^= tie
            np.copyto(labels, hi, where=new)
            np.copyto(low, hi, where=new)
            free &= ~(new | tie)
            allowed &= free
    for _ in range(3):
        todo = region & (labels == 0)
        if not todo.any():
            break
        hi = cv2.dilate(labels, kernel)
        labels[todo] = hi[todo]
    return labels.astype(np.int32)


def measure_labels(labels: np.ndarray, mpp_um: float | None, params: NucleiParams | None = None,
                   want_contours: bool = False, threshold: float = float("nan")) -> NucleiMeasurement:
    """Per-tile summary of a label image (small fragments and oversized blobs dropped)."""
    params = params or NucleiParams()
    mpp = mpp_um or _DEFAULT_MPP_UM
    h, w = labels.shape
    n = int(labels.max()) + 1 if labels.size else 1
    flat = labels.ravel()
    area_px = np.bincount(flat, minlength=n).astype(np.float64)
    ys, xs = np.indices(labels.shape, dtype=np.float64)
    sx = np.bincount(flat, xs.ravel(), n)
    sy = np.bincount(flat, ys.ravel(), n)
    keep = (area_px >= _px(_px(params.min_area_um2, mpp), mpp)) & (area_px <= _px(_px(params.max_area_um2, mpp), mpp))
    keep[0] = False
    ids = np.flatnonzero(keep)
    a = np.maximum(area_px, 1)
    cx, cy = sx / a, sy / a
    sxx = np.bincount(flat, (xs * xs).ravel(), n) / a - cx * cx
    syy = np.bincount(flat, (ys * ys).ravel(), n) / a - cy * cy
    sxy = np.bincount(flat, (xs * ys).ravel(), n) / a - cx * cy
    half_tr, det_part = (sxx + syy) / 2, np.sqrt(np.maximum(((sxx - syy) / 2) ** 2 + sxy ** 2, 0))
    l1, l2 = half_tr + det_part + 1 / 12, half_tr - det_part + 1 / 12  # + pixel's own variance
    ecc = np.sqrt(np.clip(1 - l2 / np.maximum(l1, 1e-12), 0, 1))
    border = np.zeros(n, bool)
    border[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True

    circ = np.full(n, np.nan)
    contours: list[np.ndarray] = []
    if ids.size:
        # bounding boxes, then one findContours per nucleus on its crop
        lab_k = flat[flat > 0]
        pix = np.flatnonzero(flat > 0)
        px_x, px_y = pix % w, pix // w
        x0 = np.full(n, w, np.int64)
        y0 = np.full(n, h, np.int64)
        x1 = np.zeros(n, np.int64)
        y1 = np.zeros(n, np.int64)
        np.minimum.at(x0, lab_k, px_x)
        np.minimum.at(y0, lab_k, px_y)
        np.maximum.at(x1, lab_k, px_x)
        np.maximum.at(y1, lab_k, px_y)
        for k in ids:
            crop = (labels[y0[k]:y1[k] + 1, x0[k]:x1[k] + 1] == k).astype(np.uint8)
            found, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            c = max(found, key=len)
            hull_area = cv2.contourArea(cv2.convexHull(c))
            if hull_area > 0 and area_px[k] / (hull_area + len(c) / 2 + 1) < params.min_solidity:
                keep[k] = False  # pixel area ≈ contour area + half the boundary pixels
                continue
            perim = cv2.arcLength(c, True)
            circ[k] = min(1.0, 4 * math.pi * cv2.contourArea(c) / perim ** 2) if perim > 0 else 1.0
            if want_contours:
                contours.append((c.reshape(-1, 2) + np.array([x0[k], y0[k]])).astype(np.int32))
        ids = np.flatnonzero(keep)

    scale_known = mpp_um is not None
    unit_area = mpp_um ** 2 if scale_known else 1.0
    areas = area_px[ids] * unit_area
    # area statistics from whole nuclei: those cut by the tile border are counted but not sized
    whole = ~border[ids]
    sized = areas[whole] if whole.any() else areas
    count = int(ids.size)
    tile_mm2 = h * w * unit_area / 1e6 if scale_known else float("nan")
    nan = float("nan")
    return NucleiMeasurement(
        count=count,
        density_per_mm2=count / tile_mm2 if scale_known else nan,
        mean_area=float(sized.mean()) if count else nan,
        median_area=float(np.median(sized)) if count else nan,
        mean_circularity=float(np.nanmean(circ[ids])) if count else nan,
        mean_eccentricity=float(ecc[ids].mean()) if count else nan,
        area_unit="um2" if scale_known else "px2",
        mpp_um=mpp_um,
        tile_shape=(h, w),
        threshold=float(threshold),
        areas=areas,
        centroids=np.column_stack([cx[ids], cy[ids]]),
        contours=tuple(contours) if want_contours else None,
    )


def measure_nuclei(rgb_tile: np.ndarray, mpp_um: float | None, want_contours: bool = False,
                   params: NucleiParams | None = None) -> NucleiMeasurement:
    """Segment and measure the nuclei of one RGB uint8 tile whose pixels are ``mpp_um`` µm.

    ``mpp_um=None``: scale unknown; sizes assume 0.5 µm/px, areas come back in px² and the
    density is NaN (``area_unit == "px2"``).
    """
    if rgb_tile.ndim != 3 or rgb_tile.shape[2] != 3 or rgb_tile.dtype != np.uint8:
        raise ValueError("measure_nuclei needs an (H, W, 3) uint8 RGB tile")
    if mpp_um is not None and not mpp_um > 0:
        raise ValueError(f"mpp_um must be positive, got {mpp_um}")
    params = params or NucleiParams()
    od = optical_density(rgb_tile)
    m = stain_unmixing_matrix(params.stain_matrix)
    mask, thr = _nuclei_mask(od, m, mpp_um, params)
    labels = split_nuclei(mask, mpp_um, params)
    if labels.any():
        # marking ink and pigment are dark in haematoxylin too but lack the nuclei's red: drop them
        eosin = od[..., 0] * m[0, 1] + od[..., 1] * m[1, 1] + od[..., 2] * m[2, 1]
        n = int(labels.max()) + 1
        mean_e = np.bincount(labels.ravel(), eosin.ravel(), n) / np.maximum(np.bincount(labels.ravel(), minlength=n), 1)
        ink = mean_e < -params.max_eosin_deficit
        ink[0] = False
        if ink.any():
            labels = np.where(ink[labels], 0, labels)
    return measure_labels(labels, mpp_um, params, want_contours, thr)


def patch_mpp(grid: TileGrid, slide_mpp_um: float | None) -> float | None:
    """µm per pixel of the patch the model sees (``tile_px`` square covering ``tile_l0`` px)."""
    if slide_mpp_um is None or grid.whole_image:
        return None
    return grid.tile_l0_w / grid.tile_px * slide_mpp_um


def level0_per_tile_px(grid: TileGrid) -> tuple[float, float]:
    return grid.tile_l0_w / grid.tile_px, grid.tile_l0_h / grid.tile_px


def measure_tile(slide: Slide, grid: TileGrid, index: int, want_contours: bool = True,
                 params: NucleiParams | None = None) -> tuple[NucleiMeasurement, np.ndarray]:
    """Read tile ``index`` (the model's patch) and measure it: (measurement, rgb patch).

    For the tile inspector: draw ``m.contours`` on the patch, or ``contours_level0_for(m, grid,
    index)`` on the slide.
    """
    from cellview.analysis.tiling import read_tile

    rgb = read_tile(slide, grid, index)
    mpp = patch_mpp(grid, slide.mpp.um if slide.mpp else None)
    return measure_nuclei(rgb, mpp, want_contours, params), rgb


def contours_level0_for(m: NucleiMeasurement, grid: TileGrid, index: int) -> tuple[np.ndarray, ...]:
    """A tile's nucleus contours in level-0 coordinates."""
    x, y, _, _ = grid.rect(index)
    return m.contours_level0((x, y), level0_per_tile_px(grid))


def draw_contours(rgb: np.ndarray, m: NucleiMeasurement, color: tuple[int, int, int] = (0, 255, 0),
                  thickness: int = 1) -> np.ndarray:
    """A copy of the tile with the nucleus contours drawn (tile-pixel contours)."""
    if m.contours is None:
        raise ValueError("contours were not requested (want_contours=False)")
    out = np.ascontiguousarray(rgb).copy()
    cv2.drawContours(out, [c.reshape(-1, 1, 2) for c in m.contours], -1, color, thickness)
    return out


# ----------------------------------------------------------------------------- regions


@dataclass(frozen=True, eq=False)
class Region:
    """A connected malignant region. Coordinates are level-0 pixels.

    ``polygons`` holds one (outline, *holes) tuple per edge-connected part; tiles that only touch
    by a corner are separate parts of one region, so each polygon stays valid (OGC simple
    features, as QuPath's JTS wants them). Each ring is a closed (K, 2) float64 array.
    """

    rank: int  # 1 = largest
    polygons: tuple[tuple[np.ndarray, ...], ...]
    bbox: tuple[int, int, int, int]  # x, y, width, height (level-0)
    area_l0_px2: float
    area_mm2: float  # NaN when the scale is unknown
    tile_indices: np.ndarray
    mean_confidence: float

    @property
    def n_tiles(self) -> int:
        return int(self.tile_indices.size)

    @property
    def rings(self) -> tuple[np.ndarray, ...]:
        """Every outline and hole, for drawing."""
        return tuple(ring for polygon in self.polygons for ring in polygon)

    def label(self) -> str:
        if math.isfinite(self.area_mm2):
            return f"{self.area_mm2:.3g} mm²"
        return plural(self.n_tiles, "tile")


def _snap(points: np.ndarray) -> np.ndarray:
    """Contour pixels of a ×2 cell image → grid-cell corner coordinates (exact outline)."""
    return (points + (points & 1)) // 2


def _ring(points: np.ndarray) -> np.ndarray:
    p = _snap(points.reshape(-1, 2).astype(np.int64))
    keep = np.ones(len(p), bool)
    keep[1:] = np.any(p[1:] != p[:-1], axis=1)
    p = p[keep]
    if len(p) > 1 and np.all(p[0] == p[-1]):
        p = p[:-1]
    # drop collinear middle points
    if len(p) >= 3:
        prev, nxt = np.roll(p, 1, axis=0), np.roll(p, -1, axis=0)
        cross = (p[:, 0] - prev[:, 0]) * (nxt[:, 1] - p[:, 1]) - (p[:, 1] - prev[:, 1]) * (nxt[:, 0] - p[:, 0])
        p = p[cross != 0]
    return np.vstack([p, p[:1]])


def _shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2)


def _trace_part(part: np.ndarray) -> tuple[np.ndarray, ...]:
    """Outline and holes of one edge-connected cell set, in cell-corner coordinates.

    Cells are doubled in size so a pinch (two cells of the part touching only by a corner, the
    part closing around it) traces as a hole touching the outline at one point, which is valid;
    1 px pad for findContours.
    """
    big = np.pad(np.kron(part.astype(np.uint8), np.ones((2, 2), np.uint8)), 1)
    found, hier = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer = [i for i in range(len(found)) if hier[0][i][3] < 0]
    holes = [i for i in range(len(found)) if hier[0][i][3] >= 0]
    return tuple(_ring(found[i].reshape(-1, 2) - 1).astype(np.float64) for i in outer[:1] + holes)


def regions_from_mask(cells: np.ndarray, stride_xy: tuple[float, float], slide_wh: tuple[int, int] | None = None,
                      mpp_um: float | None = None, connectivity: int = 8
                      ) -> list[tuple[np.ndarray, tuple[tuple[np.ndarray, ...], ...], float]]:
    """Connected components of a (rows, cols) bool cell mask → [(cell mask, polygons (level-0), area px²)].

    A component (``connectivity`` 8: cells touching by a corner belong together) is drawn as one
    polygon per edge-connected part. Each component is traced inside its own bounding box, so the
    cost grows with the grid, not with grid × number of regions (noisy predictions make thousands
    of small regions).
    """
    n, comp, stats, _ = cv2.connectedComponentsWithStats(cells.astype(np.uint8), connectivity=connectivity)
    out = []
    sx, sy = stride_xy
    for k in range(1, n):
        c0, r0 = int(stats[k, cv2.CC_STAT_LEFT]), int(stats[k, cv2.CC_STAT_TOP])
        w, h = int(stats[k, cv2.CC_STAT_WIDTH]), int(stats[k, cv2.CC_STAT_HEIGHT])
        crop = comp[r0:r0 + h, c0:c0 + w] == k
        member = np.zeros(cells.shape, bool)
        member[r0:r0 + h, c0:c0 + w] = crop
        n_parts, parts = cv2.connectedComponents(crop.astype(np.uint8), connectivity=4)
        polygons = []
        for part in range(1, n_parts):
            rings = _trace_part(parts == part)
            for r in rings:  # cell corners → level 0 by the grid's own edge rule
                col, row = r[:, 0] + c0, r[:, 1] + r0
                r[:, 0] = cell_edges(col, cells.shape[1], sx, None if slide_wh is None else slide_wh[0])
                r[:, 1] = cell_edges(row, cells.shape[0], sy, None if slide_wh is None else slide_wh[1])
            polygons.append(rings)
        polygons.sort(key=lambda rings: (-_shoelace(rings[0]), float(rings[0][:, 1].min()), float(rings[0][:, 0].min())))
        area = sum(_shoelace(rings[0]) - sum(_shoelace(r) for r in rings[1:]) for rings in polygons)
        out.append((member, tuple(polygons), area))
    return out


def malignant_regions(result: AnalysisResult, min_confidence: float = 0.5, connectivity: int = 8,
                      category: str = "malignant", include_out_of_domain: bool = False) -> list[Region]:
    """Regions of tiles predicted ``category`` with confidence ≥ ``min_confidence``, largest first.

    Each tile owns its stride cell (the whole tile when there is no overlap); cells touching
    by an edge or (connectivity 8) a corner form one region. Areas are clipped to the slide.
    Only in-domain tiles join a region (a model's call on tissue it never saw is no finding),
    unless ``include_out_of_domain``.
    """
    from cellview.analysis.model_spec import CATEGORIES

    g = result.grid
    hit = result.counted(include_out_of_domain) & (result.pred_category == CATEGORIES.index(category))
    hit &= np.nan_to_num(result.confidence, nan=-1.0) >= min_confidence
    cells = np.zeros(g.shape, bool)
    cells[g.grid_row[hit], g.grid_col[hit]] = True
    index = g.index_grid()
    mpp = result.slide.mpp
    stride = (g.stride_l0_x, g.stride_l0_y)
    found = regions_from_mask(cells, stride, (g.slide_w_l0, g.slide_h_l0), connectivity=connectivity)
    regions = []
    for member, polygons, area in found:
        tiles = np.sort(index[member])
        outlines = np.vstack([rings[0] for rings in polygons])
        x0, y0 = outlines.min(axis=0)
        x1, y1 = outlines.max(axis=0)
        area_mm2 = area * mpp.x_um * mpp.y_um / 1e6 if mpp is not None else float("nan")
        regions.append(Region(
            rank=0, polygons=polygons, bbox=(int(x0), int(y0), int(x1 - x0), int(y1 - y0)), area_l0_px2=area,
            area_mm2=area_mm2, tile_indices=tiles, mean_confidence=float(np.mean(result.confidence[tiles])),
        ))
    regions.sort(key=lambda r: (-r.area_l0_px2, r.bbox[1], r.bbox[0]))
    return [Region(i + 1, r.polygons, r.bbox, r.area_l0_px2, r.area_mm2, r.tile_indices, r.mean_confidence)
            for i, r in enumerate(regions)]
