"""The slide as Deep Zoom tiles for OpenSeadragon: openslide-python's ``DeepZoomGenerator`` over CellView's Slide.

``DeepZoomGenerator`` reads through ``SlideSource``, which gives it OpenSlide's interface on top of any
``cellview.slides`` Slide: whole slides keep CellView's rules (levels with wrong colours are skipped and read
from the nearest good finer level), plain images get a pyramid of in-memory reductions so zoomed-out views
do not shrink the full image for every tile. Handles are opened per job, used under a lock (a Slide is not
thread-safe) and closed when the job goes or when too many are open.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from cellview.analysis.tiling import TileGrid, read_tile
from cellview.slides.opening import open_slide
from cellview.slides.slide import Slide

TILE_PX = 254
OVERLAP_PX = 1
JPEG_QUALITY = 85
PLAIN_LEVEL_MIN_PX = 512  # plain images: reductions by 2 until the longer side is at most this


class SlideSource:
    """OpenSlide's reading interface (what ``DeepZoomGenerator`` calls) over a CellView Slide."""

    def __init__(self, slide: Slide) -> None:
        self.slide = slide
        self.properties: dict[str, str] = {}  # no bounds, white background: reads come composited on white
        self._reduced: list[np.ndarray] = []
        dims = list(slide.level_dimensions)
        downs = list(slide.level_downsamples)
        if slide.level_count == 1 and getattr(slide, "vendor", "") == "image":
            img = slide.read_region((0, 0), 0, slide.dimensions)
            while max(img.shape[:2]) > PLAIN_LEVEL_MIN_PX:
                h, w = img.shape[:2]
                img = cv2.resize(img, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
                self._reduced.append(img)
                dims.append((img.shape[1], img.shape[0]))
                downs.append(slide.dimensions[0] / img.shape[1])
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple(downs)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        if not self._reduced:
            return self.slide.best_level_for_downsample(downsample)
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = level
        return best

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """RGBA PIL image of ``size`` at ``level`` from level-0 ``location``, as OpenSlide returns it."""
        if level == 0 or not self._reduced:
            rgb = self.slide.read_region(location, level, size)
        else:
            img = self._reduced[level - 1]
            ds = self.level_downsamples[level]
            x, y = int(location[0] / ds), int(location[1] / ds)
            w, h = int(size[0]), int(size[1])
            rgb = np.full((h, w, 3), 255, np.uint8)
            part = img[max(y, 0):y + h, max(x, 0):x + w]
            rgb[:part.shape[0], :part.shape[1]] = part
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("RGBA")


class OpenSlideView:
    """One job's slide handle with its Deep Zoom generator; every read holds ``lock``."""

    def __init__(self, path: Path, mpp_um: float | None) -> None:
        from openslide.deepzoom import DeepZoomGenerator

        self.lock = threading.Lock()
        self.slide = open_slide(path, mpp_um=mpp_um)
        self.source = SlideSource(self.slide)
        self.dz = DeepZoomGenerator(self.source, tile_size=TILE_PX, overlap=OVERLAP_PX, limit_bounds=False)
        self._stain: dict[str, Any] = {}

    def dzi(self) -> str:
        return self.dz.get_dzi("jpeg")

    def tile_jpeg(self, level: int, col: int, row: int) -> bytes | None:
        """One Deep Zoom tile as JPEG bytes; None when the address is outside the pyramid."""
        if not 0 <= level < self.dz.level_count:
            return None
        cols, rows = self.dz.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            return None
        with self.lock:
            tile = self.dz.get_tile(level, (col, row))
        buf = io.BytesIO()
        tile.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    def patch_png(self, grid: TileGrid, index: int, stain: Callable[[Slide], Any] | None = None) -> bytes:
        """The exact patch the model was fed for one tile (stain-normalised when the run was), as PNG."""
        with self.lock:
            rgb = read_tile(self.slide, grid, index)
            if stain is not None:
                key = id(grid)
                if key not in self._stain:
                    self._stain[key] = stain(self.slide)
                rgb = self._stain[key].apply(rgb)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError("PNG encoding failed")
        return buf.tobytes()

    def close(self) -> None:
        with self.lock:
            self.slide.close()


class SlideViews:
    """The open views, by job id, at most ``capacity`` (the least recently used closes first)."""

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._views: OrderedDict[str, OpenSlideView] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, path: Path, mpp_um: float | None) -> OpenSlideView:
        with self._lock:
            view = self._views.get(job_id)
            if view is not None:
                self._views.move_to_end(job_id)
                return view
        view = OpenSlideView(path, mpp_um)  # outside the lock: opening checks the file
        with self._lock:
            other = self._views.get(job_id)
            if other is not None:
                view.close()
                return other
            self._views[job_id] = view
            old = [self._views.popitem(last=False)[1] for _ in range(max(0, len(self._views) - self.capacity))]
        for v in old:
            v.close()
        return view

    def forget(self, job_id: str) -> None:
        with self._lock:
            view = self._views.pop(job_id, None)
        if view is not None:
            view.close()

    def close(self) -> None:
        with self._lock:
            views = list(self._views.values())
            self._views.clear()
        for v in views:
            v.close()
