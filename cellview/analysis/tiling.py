"""The tile grid: level-0 rectangles at the model's µm per pixel, read from the best level.

The rule (``TILING_RULE``), per axis, for a slide ``W`` px wide, tiles ``T`` px wide and a stride
``S`` (= T without overlap): ``n = 1`` if ``W ≤ T`` else ``ceil((W − T) / S) + 1`` tiles at
``x_k = min(k·S, W − T)``. Every tile lies inside the slide: the last column (row) is shifted
inward so its far edge is the slide's edge, overlapping its neighbour instead of reaching past
the slide into white padding. Each point of the slide belongs to exactly one grid cell
``min(floor(x / S), n − 1)`` (the last cell ends at the slide's edge) and lies inside that cell's tile, so
the whole slide, hence all its tissue, is covered. With overlap the last cell, ``n − 1``, also
takes the points past ``n·S`` (its tile reaches the slide's edge). Only a slide smaller than one
tile gets a padded tile (at 0); its reported rectangle is still clipped to the slide.

One exception: a last cell narrower than ``SLIVER_FRACTION`` of the stride is no column (row) of
its own. Its tile would be almost a copy of its neighbour (a 3-px sliver on a small image) yet
count as a whole tile in the shares and carry its own verdicts; instead the cell before it
extends to the slide's edge. Its points still belong to exactly one cell, the last, whose tile
ends less than ``SLIVER_FRACTION × S`` before the edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from cellview.analysis.tissue import TissueMask
from cellview.base.errors import AnalysisError, SlideError
from cellview.slides.slide import Slide


@dataclass(frozen=True)
class TileGrid:
    """Tiles kept for analysis (tissue fraction ≥ threshold), in row-major grid order.

    A tile covers ``tile_l0_w × tile_l0_h`` level-0 pixels starting at (``l0_x``, ``l0_y``); it
    is read at ``read_level`` as ``read_w × read_h`` pixels and resized to ``tile_px`` square.
    Tiles lie inside the slide (the last row and column shifted inward; see the module's rule).
    Grid cell (``grid_row``, ``grid_col``) is the ``stride_l0`` cell the tile owns for display.
    """

    slide_w_l0: int
    slide_h_l0: int
    tile_px: int
    tile_l0_w: int
    tile_l0_h: int
    stride_l0_x: int
    stride_l0_y: int
    read_level: int
    read_w: int
    read_h: int
    n_cols: int
    n_rows: int
    grid_col: np.ndarray
    grid_row: np.ndarray
    l0_x: np.ndarray
    l0_y: np.ndarray
    tissue_fraction: np.ndarray
    tissue_threshold: float
    whole_image: bool = False

    @property
    def n_tiles(self) -> int:
        return int(self.l0_x.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_cols

    def index_grid(self) -> np.ndarray:
        """(n_rows, n_cols) int32 array: tile index at each grid cell, -1 where none (built once)."""
        return self._index_grid

    @cached_property
    def _index_grid(self) -> np.ndarray:
        out = np.full((self.n_rows, self.n_cols), -1, dtype=np.int32)
        out[self.grid_row, self.grid_col] = np.arange(self.n_tiles, dtype=np.int32)
        out.setflags(write=False)
        return out

    def tile_at(self, l0_x: float, l0_y: float) -> int:
        """Index of the tile whose cell contains the level-0 point (-1: none, or outside the slide)."""
        if not (0 <= l0_x < self.slide_w_l0 and 0 <= l0_y < self.slide_h_l0):
            return -1
        col = min(int(l0_x // self.stride_l0_x), self.n_cols - 1)
        row = min(int(l0_y // self.stride_l0_y), self.n_rows - 1)
        return int(self.index_grid()[row, col])

    @property
    def display_shape(self) -> tuple[int, int]:
        """(rows, cols) of stride cells that cover the slide; cells past the grid's last belong to it."""
        return (max(self.n_rows, math.ceil(self.slide_h_l0 / self.stride_l0_y)),
                max(self.n_cols, math.ceil(self.slide_w_l0 / self.stride_l0_x)))

    def to_display(self, cells: np.ndarray) -> np.ndarray:
        """A (n_rows, n_cols, ...) per-cell array laid out on ``display_shape`` uniform stride cells.

        With overlap, the last tile reaches past the last stride cell to the slide's edge; the
        extra display cells repeat it, so an image of them drawn at ``display_shape × stride`` and
        clipped to the slide shows every cell where it belongs.
        """
        rows, cols = self.display_shape
        r = np.minimum(np.arange(rows), self.n_rows - 1)
        c = np.minimum(np.arange(cols), self.n_cols - 1)
        return cells[r[:, None], c[None, :]]

    def cell_edges_l0(self, index: np.ndarray, axis: str) -> np.ndarray:
        """Level-0 coordinate of cell edge ``index`` (0..n) along "x" or "y"; edge n is the slide's edge."""
        n, stride, extent = ((self.n_cols, self.stride_l0_x, self.slide_w_l0) if axis == "x"
                             else (self.n_rows, self.stride_l0_y, self.slide_h_l0))
        return cell_edges(index, n, stride, extent)

    def rect(self, index: int) -> tuple[int, int, int, int]:
        """(l0_x, l0_y, width, height) of one tile, within the slide (what exports and views show)."""
        x, y = int(self.l0_x[index]), int(self.l0_y[index])
        return (x, y, min(self.tile_l0_w, self.slide_w_l0 - x), min(self.tile_l0_h, self.slide_h_l0 - y))



def cell_edges(index: np.ndarray, n: int, stride: float, extent: float | None) -> np.ndarray:
    """Level-0 coordinate of cell edges along one axis: ``index × stride``, clipped to the slide, and edge
    ``n`` (the far side of the last cell) is the slide's edge, as the inward-shifted last tile reaches it.
    Without an ``extent`` (a bare mask) edges are just ``index × stride``."""
    index = np.asarray(index)
    if extent is None:
        return (index * stride).astype(np.float64)
    return np.where(index >= n, extent, np.minimum(index * stride, extent)).astype(np.float64)

TILING_RULE = "inside-v3"
"""Names the rule above; recorded in the metadata and the cache key, so results of an older rule are
never mistaken for current ones (v2: no sliver cell at the far edge; v3: the tissue mask averaged from a
level 4× finer than the mask, ``tissue.MASK_SOURCE_FINER``, so a slide's grid no longer depends on its
container's pyramid)."""

SLIVER_FRACTION = 0.1
"""A last cell narrower than this share of the stride joins the cell before it (see the module docstring)."""


def _axis_count(extent: int, tile: int, stride: int) -> int:
    if extent <= tile:
        return 1
    n = int(math.ceil((extent - tile) / stride)) + 1
    if extent - (n - 1) * stride < SLIVER_FRACTION * stride:  # the last cell would be a sliver
        n -= 1
    return n


def axis_positions(extent: int, tile: int, stride: int) -> np.ndarray:
    """Tile origins along one axis: ``min(k·stride, extent − tile)``, all inside ``[0, extent]`` (no sliver:
    ``SLIVER_FRACTION``).

    The one place the rule is written down in code (see the module docstring); training-time
    evaluation tiles mirror it.
    """
    n = _axis_count(extent, tile, stride)
    return np.minimum(np.arange(n, dtype=np.int64) * stride, max(0, extent - tile))


def tissue_fractions(mask: TissueMask, xs: np.ndarray, ys: np.ndarray, w: int, h: int) -> np.ndarray:
    """Share of each level-0 rectangle covered by tissue (area outside the slide counts as none)."""
    m = mask.mask.astype(np.uint8)
    integral = cv2.integral(m).astype(np.float64)
    mh, mw = m.shape
    ds = mask.downsample
    x0 = np.clip(np.floor(xs / ds).astype(np.int64), 0, mw)
    y0 = np.clip(np.floor(ys / ds).astype(np.int64), 0, mh)
    x1 = np.clip(np.ceil((xs + w) / ds).astype(np.int64), 0, mw)
    y1 = np.clip(np.ceil((ys + h) / ds).astype(np.int64), 0, mh)
    covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    full = np.maximum((np.ceil((xs + w) / ds) - np.floor(xs / ds)) * (np.ceil((ys + h) / ds) - np.floor(ys / ds)), 1)
    return (covered / full).astype(np.float32)


def build_grid(
    slide: Slide,
    tile_px: int,
    model_mpp_um: float | None,
    tissue: TissueMask | None,
    tissue_threshold: float = 0.25,
    overlap: float = 0.0,
    whole_image: bool = False,
) -> TileGrid:
    """Tiles at the model's scale. ``whole_image`` makes one tile of the whole image instead."""
    w0, h0 = slide.dimensions
    if whole_image:
        one = np.zeros(1, dtype=np.int64)
        frac = (
            tissue_fractions(tissue, one, one, w0, h0) if tissue is not None else np.ones(1, np.float32)
        )
        level = slide.best_level_for_downsample(max(w0, h0) / tile_px)
        ds = slide.level_downsamples[level]
        return TileGrid(
            slide_w_l0=w0, slide_h_l0=h0, tile_px=tile_px, tile_l0_w=w0, tile_l0_h=h0,
            stride_l0_x=w0, stride_l0_y=h0, read_level=level, read_w=max(1, round(w0 / ds)),
            read_h=max(1, round(h0 / ds)), n_cols=1, n_rows=1,
            grid_col=one.astype(np.int32), grid_row=one.astype(np.int32), l0_x=one, l0_y=one,
            tissue_fraction=frac, tissue_threshold=0.0, whole_image=True,
        )
    if not 0.0 <= overlap < 0.9:
        raise AnalysisError(f"Tile overlap must be between 0 and 0.9, got {overlap}.")
    if model_mpp_um is None:
        raise AnalysisError("The model's µm per pixel is needed to tile a slide.")
    slide_mpp = slide.require_mpp().um
    tile_l0 = max(1, int(round(tile_px * model_mpp_um / slide_mpp)))
    stride = max(1, int(round(tile_l0 * (1.0 - overlap))))
    n_cols, n_rows = _axis_count(w0, tile_l0, stride), _axis_count(h0, tile_l0, stride)
    if n_cols * n_rows > 50_000_000:
        raise AnalysisError(f"{n_cols * n_rows} tiles is more than CellView handles; check the mpp.")
    level = slide.best_level_for_downsample(tile_l0 / tile_px)
    read_px = max(1, int(round(tile_l0 / slide.level_downsamples[level])))
    rows, cols = np.divmod(np.arange(n_rows * n_cols, dtype=np.int64), n_cols)
    xs, ys = axis_positions(w0, tile_l0, stride)[cols], axis_positions(h0, tile_l0, stride)[rows]
    if tissue is not None:
        frac = tissue_fractions(tissue, xs, ys, tile_l0, tile_l0)
        keep = frac >= tissue_threshold
    else:
        frac = np.ones(xs.shape, np.float32)
        keep = np.ones(xs.shape, bool)
    return TileGrid(
        slide_w_l0=w0, slide_h_l0=h0, tile_px=tile_px, tile_l0_w=tile_l0, tile_l0_h=tile_l0,
        stride_l0_x=stride, stride_l0_y=stride, read_level=level, read_w=read_px, read_h=read_px,
        n_cols=n_cols, n_rows=n_rows,
        grid_col=cols[keep].astype(np.int32), grid_row=rows[keep].astype(np.int32),
        l0_x=xs[keep], l0_y=ys[keep], tissue_fraction=frac[keep], tissue_threshold=tissue_threshold,
    )


READ_STRIPE_PX = 4096
"""Width (pixels of the read level) of the vertical stripes tiles are read in (``read_order``)."""


def read_order(grid: TileGrid, stripe_px: int = READ_STRIPE_PX) -> np.ndarray:
    """Tile indices in the order to read them: stripes of ``stripe_px`` read-level pixels, each top to bottom.

    Tiles rarely align with a slide's stored (JPEG) tiles, so neighbours share stored tiles. In row order
    the stored tiles a tile row shares with the next one are long gone from the decoder's cache when that row
    is read (a row of a 60k-pixel slide spans hundreds of stored tiles), and are decoded again; in narrow
    stripes they are still there. Results are indexed by tile, so only the reading order changes.
    """
    cols = max(1, int(stripe_px // max(1, grid.read_w)))
    stripe = grid.grid_col.astype(np.int64) // cols
    return np.lexsort((grid.grid_col, grid.grid_row, stripe))


def read_tile(slide: Slide, grid: TileGrid, index: int, out: np.ndarray | None = None) -> np.ndarray:
    """The exact RGB uint8 patch the model sees for one tile (``tile_px`` square).

    A tile that cannot be read from a coarser pyramid level (some converters write malformed
    edge tiles there) is read again from level 0 and downsampled; only if that fails too does
    the SlideError reach the caller.
    """
    origin = (int(grid.l0_x[index]), int(grid.l0_y[index]))
    try:
        region = slide.read_region(origin, grid.read_level, (grid.read_w, grid.read_h))
    except SlideError:
        if grid.read_level == 0:
            raise
        region = slide.read_region(origin, 0, (grid.tile_l0_w, grid.tile_l0_h))
    size = (grid.tile_px, grid.tile_px)
    if region.shape[1] == grid.tile_px and region.shape[0] == grid.tile_px:
        if out is None:
            return region
        out[...] = region
        return out
    interp = cv2.INTER_AREA if region.shape[1] > grid.tile_px else cv2.INTER_LINEAR
    if out is None:
        return cv2.resize(region, size, interpolation=interp)
    cv2.resize(region, size, dst=out, interpolation=interp)
    return out
