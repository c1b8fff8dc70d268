"""Generators the GUI runs in a Worker for display: pyramid tiles and inspector patches.

Each opens its own slide handle (OpenSlide handles are never shared across threads) and only
yields plain data, so the main thread never waits on OpenSlide. The viewer's own jobs (open,
analyse, regions, tissue, explain) live in the Qt-free ``cellview.viewer`` parts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from cellview.analysis.morphology import NucleiMeasurement, measure_nuclei, patch_mpp
from cellview.analysis.pipeline import CancelToken
from cellview.analysis.stain import TileStainTransform
from cellview.analysis.tiling import TileGrid, read_tile
from cellview.base.errors import SlideError
from cellview.slides.opening import open_slide

VIEW_TILE_PX = 512
"""Side of one display tile, in pixels of its pyramid level."""


# ----------------------------------------------------------------------------- tile loading

TileKey = tuple[int, int, int]  # (level, tile_x, tile_y)


@dataclass(frozen=True)
class TileLoaded:
    """One display tile as BGRA (QImage.Format_RGB32 layout when opaque), converted off the main thread."""

    key: TileKey
    l0_rect: tuple[float, float, float, float]
    bgra: np.ndarray
    opaque: bool = True


@dataclass(frozen=True)
class PatchLoaded:
    """The exact patch the model saw for one tile, and its nuclei (for the inspector)."""

    index: int
    grid_id: int
    rgb: np.ndarray | None  # None: the region could not be read
    nuclei: NucleiMeasurement | None = None  # with contours; None: not measured or failed
    contoured: np.ndarray | None = None  # the patch at display size with the nucleus contours drawn


@dataclass(frozen=True)
class PatchRequest:
    """``mpp_um`` is the slide's µm per level-0 pixel as the viewer knows it (possibly user-entered),
    which the loader's own slide handle does not know; ``display_px`` is the inspector's patch size."""

    index: int
    grid: TileGrid
    mpp_um: float | None = None
    display_px: int = 0  # 0: do not measure nuclei
    stain: TileStainTransform | None = None  # the run's stain normalisation: the patch is shown as the model saw it


CONTOUR_RGB = (57, 255, 20)
"""Nucleus contours in the inspector: bright green, away from the H&E pinks and purples."""


def contoured_patch(rgb: np.ndarray, m: NucleiMeasurement, display_px: int) -> np.ndarray:
    """The patch resized to ``display_px`` with the contours drawn at that size.

    Drawing at display size keeps them one crisp screen pixel wide; drawn on the model patch and
    then scaled down they would blur into the stain.
    """
    h, w = rgb.shape[:2]
    k = display_px / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    out = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
    if m.contours:
        # contour points are pixel centres: (p + 0.5) * k − 0.5 in the resized image, 4 fractional bits
        pts = [np.round(((c.astype(np.float64) + 0.5) * k - 0.5) * 16).astype(np.int32).reshape(-1, 1, 2)
               for c in m.contours]
        cv2.polylines(out, pts, True, CONTOUR_RGB, 1, cv2.LINE_AA, shift=4)
    return out


def load_patch(slide, request: PatchRequest) -> PatchLoaded:
    """Read one inspector patch and, when asked, measure its nuclei (on the calling loader thread).

    The patch is the one fed to the model: stain-normalised when the run was (``request.stain``); the
    nuclei are measured on the tile as scanned, as the pipeline measures them, and drawn on that patch.
    """
    grid_id = id(request.grid)
    try:
        scanned = read_tile(slide, request.grid, request.index)
    except SlideError:
        return PatchLoaded(request.index, grid_id, None)
    rgb = scanned if request.stain is None else request.stain.apply(scanned)
    if request.display_px <= 0:
        return PatchLoaded(request.index, grid_id, rgb)
    try:
        m = measure_nuclei(scanned, patch_mpp(request.grid, request.mpp_um), want_contours=True)
    except Exception:  # noqa: BLE001 - a failed measurement only costs the nuclei, not the patch or the loader
        return PatchLoaded(request.index, grid_id, rgb)
    return PatchLoaded(request.index, grid_id, rgb, m, contoured_patch(rgb, m, request.display_px))


class TileRequests:
    """What the loaders should read next; the main thread replaces it whenever the view moves.

    Patch requests jump the queue. Stale tile requests are simply dropped on the next ``replace``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tiles: list[TileKey] = []
        self._patches: list[PatchRequest] = []
        self._in_flight: set[TileKey] = set()
        self._wake = threading.Semaphore(0)
        self.closed = threading.Event()

    def replace(self, keys: list[TileKey]) -> None:
        with self._lock:
            self._tiles = [k for k in keys if k not in self._in_flight]
        self._wake.release()

    def add_patch(self, request: PatchRequest) -> None:
        with self._lock:
            self._patches = [request]
        self._wake.release()

    def close(self) -> None:
        self.closed.set()
        for _ in range(8):
            self._wake.release()

    def take(self, timeout_s: float = 0.2) -> TileKey | PatchRequest | None:
        self._wake.acquire(timeout=timeout_s)
        with self._lock:
            if self._patches:
                return self._patches.pop()
            if self._tiles:
                key = self._tiles.pop(0)
                self._in_flight.add(key)
                if self._tiles:
                    self._wake.release()  # let the other loader take the next one
                return key
        return None

    def finished(self, key: TileKey) -> None:
        with self._lock:
            self._in_flight.discard(key)


def tile_loader_task(path: str, requests: TileRequests, cancel: CancelToken) -> Iterator[TileLoaded | PatchLoaded]:
    """One loader thread: its own slide handle, reading display tiles and inspector patches on demand."""
    slide = open_slide(path)
    try:
        while not (cancel.cancelled or requests.closed.is_set()):
            req = requests.take()
            if req is None:
                continue
            if isinstance(req, PatchRequest):
                yield load_patch(slide, req)
                continue
            level, tx, ty = req
            try:
                lw, lh = slide.level_dimensions[level]
                ds = slide.level_downsamples[level]
                x, y = tx * VIEW_TILE_PX, ty * VIEW_TILE_PX
                w, h = min(VIEW_TILE_PX, lw - x), min(VIEW_TILE_PX, lh - y)
                if w <= 0 or h <= 0:
                    continue
                try:
                    rgb = slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h))
                    tile = TileLoaded(req, (x * ds, y * ds, w * ds, h * ds), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA))
                except SlideError:
                    # Damaged region: a transparent tile lets the thumbnail show and is not asked for again.
                    tile = TileLoaded(req, (x * ds, y * ds, w * ds, h * ds), np.zeros((h, w, 4), np.uint8), False)
                yield tile
            finally:
                requests.finished(req)
    finally:
        slide.close()
