"""The canvas's pyramid tiles: a byte-bounded LRU cache of loaded tiles and the pixmap items drawn from it.

Only the tiles visible at the zoom's pyramid level are drawn; coarser cached tiles stand in until the sharper
ones arrive. Kept apart from ``view.SlideView`` so the view stays a small composition of layers.
"""

from __future__ import annotations

from collections import OrderedDict

import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QPixmap, QTransform
from PySide6.QtWidgets import QGraphicsPixmapItem

from cellview.gui.canvas.items import bgra_qimage
from cellview.gui.canvas.loaders import VIEW_TILE_PX, TileKey, TileLoaded, TileRequests
from cellview.viewer.slide import Opened


class TileCache:
    """LRU of display tiles bounded in bytes (the pyramid can be far larger than memory)."""

    def __init__(self, max_bytes: int = 384 << 20) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[TileKey, TileLoaded] = OrderedDict()

    def get(self, key: TileKey) -> TileLoaded | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, tile: TileLoaded) -> None:
        if tile.key in self._items:
            return
        self._items[tile.key] = tile
        self.nbytes += tile.bgra.nbytes
        while self.nbytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.bgra.nbytes

    def __contains__(self, key: TileKey) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


class TileLayer:
    """The pyramid tiles drawn in a view box: which are wanted at this zoom, which are drawn, the cache behind them."""

    MAX_LIVE_ITEMS = 160

    def __init__(self, vb: pg.ViewBox) -> None:
        self.vb = vb
        self.cache = TileCache()
        self.items: dict[TileKey, QGraphicsPixmapItem] = {}
        self._wanted: set[TileKey] = set()
        self._mode = Qt.TransformationMode.SmoothTransformation

    def clear(self) -> None:
        for item in self.items.values():
            self.vb.removeItem(item)
        self.items.clear()
        self._wanted.clear()
        self.cache.clear()

    def level_for(self, opened: Opened, l0_per_px: float) -> int | None:
        """Pyramid level for this zoom, or None where the thumbnail is already sharp enough.

        Only usable levels: one the level check skipped (wrong colours) is never drawn.
        """
        info = opened.info
        thumb_ds = info.dimensions[0] / opened.thumbnail.shape[1]
        if l0_per_px >= thumb_ds * 0.95:
            return None
        # A level up to 1.25x coarser than the screen is still crisp and has 1.5-16x fewer pixels to draw.
        best = 0
        for level in info.usable_levels:
            if info.level_downsamples[level] <= l0_per_px * 1.25:
                best = level
        return best

    @staticmethod
    def keys_in(opened: Opened, level: int, rect: QRectF) -> list[TileKey]:
        info = opened.info
        ds = info.level_downsamples[level]
        lw, lh = info.level_dimensions[level]
        span = VIEW_TILE_PX * ds
        tx0 = max(0, int(rect.left() // span))
        ty0 = max(0, int(rect.top() // span))
        tx1 = min((lw - 1) // VIEW_TILE_PX, int(rect.right() // span))
        ty1 = min((lh - 1) // VIEW_TILE_PX, int(rect.bottom() // span))
        cx, cy = rect.center().x() / span, rect.center().y() / span
        keys = [(level, tx, ty) for ty in range(ty0, ty1 + 1) for tx in range(tx0, tx1 + 1)]
        keys.sort(key=lambda k: (k[1] + 0.5 - cx) ** 2 + (k[2] + 0.5 - cy) ** 2)
        return keys

    def update(self, opened: Opened, requests: TileRequests, rect: QRectF, l0_per_px: float) -> None:
        """Show cached tiles of the right level for the view ``rect`` (level 0), ask the loaders for the rest, drop
        the others."""
        level = self.level_for(opened, l0_per_px)
        # Magnified pixels are drawn as pixels (no seams between tiles, honest at high zoom);
        # minified ones are filtered so textures do not alias.
        smooth = level is None or l0_per_px >= opened.info.level_downsamples[level]
        mode = Qt.TransformationMode.SmoothTransformation if smooth else Qt.TransformationMode.FastTransformation
        if mode != self._mode:
            self._mode = mode
            for item in self.items.values():
                item.setTransformationMode(mode)
        wanted: list[TileKey] = [] if level is None else self.keys_in(opened, level, rect)
        wanted = wanted[: self.MAX_LIVE_ITEMS // 2]
        self._wanted = set(wanted)
        missing = [k for k in wanted if k not in self.cache]
        requests.replace(missing)
        show = {k for k in wanted if k in self.cache}
        if missing and level is not None:
            # Coarser cached tiles stand in until the sharp ones arrive.
            for coarser in (lv for lv in opened.info.usable_levels if lv > level):
                show.update(k for k in self.keys_in(opened, coarser, rect) if k in self.cache)
        for key in list(self.items):
            if key not in show:
                self.vb.removeItem(self.items.pop(key))
        for key in sorted(show, key=lambda k: -k[0]):
            if key not in self.items and len(self.items) < self.MAX_LIVE_ITEMS:
                self.add_item(self.cache.get(key))

    def add_item(self, tile: TileLoaded | None) -> None:
        if tile is None:
            return
        item = QGraphicsPixmapItem(QPixmap.fromImage(bgra_qimage(tile.bgra, tile.opaque)))
        item.setTransformationMode(self._mode)
        x, y, w, h = tile.l0_rect
        item.setPos(x, y)
        item.setTransform(QTransform.fromScale(w / tile.bgra.shape[1], h / tile.bgra.shape[0]))
        item.setZValue(-50 - tile.key[0])
        self.vb.addItem(item)
        self.items[tile.key] = item

    def loaded(self, tile: TileLoaded) -> bool:
        """A loader's tile: cached, drawn when wanted; True when every wanted tile is now drawn (the stand-ins can go)."""
        self.cache.put(tile)
        if tile.key in self._wanted and tile.key not in self.items:
            self.add_item(tile)
            return all(k in self.items for k in self._wanted)
        return False
