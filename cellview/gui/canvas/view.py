"""The slide canvas: a pyqtgraph ViewBox in level-0 pixels with pyramid tiles, overlays and a scale bar.

Only the tiles visible at the zoom's pyramid level are drawn; they are read by loader workers
(each with its own slide handle), kept in a byte-bounded LRU cache, and the thumbnail (plus any
cached coarser tiles) stays underneath until the sharper ones arrive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QPainter, QPainterPath, QPen, QPixmap, QTransform
from PySide6.QtWidgets import QGraphicsPathItem, QGraphicsPixmapItem, QGraphicsRectItem, QWidget

from cellview.analysis.morphology import Region
from cellview.gui.canvas.items import (
    HatchItem,
    RegionGraphics,
    bgra_qimage,
    cell_items,
    contour_items,
    region_graphics,
)
from cellview.gui.canvas.loaders import TileLoaded, TileRequests
from cellview.gui.canvas.tiles import TileLayer
from cellview.gui.canvas.widgets import EmptyHint, Overview, ScaleBar
from cellview.outputs.overlay import Contour
from cellview.viewer.slide import OVERVIEW_PX, Opened

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

CANVAS_BG = "#262a2e"

MAX_SCREEN_PX_PER_L0 = 8.0
"""Zooming in stops at 8 screen pixels per level-0 pixel: past it nothing more is to be seen (it went to 113)."""

MIN_SLIDE_SHARE = 1 / 3
"""Zooming out stops when the whole slide takes a third of the view (it shrank to a speck)."""

ARROW_STEPS = {Qt.Key.Key_Left: (0, -1), Qt.Key.Key_Right: (0, 1), Qt.Key.Key_Up: (-1, 0), Qt.Key.Key_Down: (1, 0)}
"""Arrow key -> (d_row, d_col) for stepping the tile selection."""


class PickViewBox(pg.ViewBox):
    """Shift+drag draws a rectangle that picks tiles (for labelling); any other drag pans as before."""

    rectPicked = Signal(float, float, float, float)  # level-0 corners

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.band = QGraphicsRectItem()
        pen = QPen(QColor("#00e5ff"), 1.5, Qt.PenStyle.DashLine)
        pen.setCosmetic(True)
        self.band.setPen(pen)
        self.band.setBrush(QBrush(QColor(0, 229, 255, 40)))
        self.band.setZValue(40)
        self.band.setVisible(False)
        self.addItem(self.band, ignoreBounds=True)

    def mouseDragEvent(self, ev, axis=None) -> None:  # noqa: N802 - pyqtgraph API
        if ev.button() != Qt.MouseButton.LeftButton or not ev.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            super().mouseDragEvent(ev, axis)
            return
        ev.accept()
        p0, p1 = self.mapSceneToView(ev.buttonDownScenePos()), self.mapSceneToView(ev.scenePos())
        if ev.isFinish():
            self.band.setVisible(False)
            self.rectPicked.emit(p0.x(), p0.y(), p1.x(), p1.y())
        else:
            self.band.setRect(QRectF(p0, p1).normalized())
            self.band.setVisible(True)


class SlideView(pg.GraphicsView):
    """Level-0 pixel coordinates, y down, aspect locked. Emits clicks and hovers in level-0 pixels.

    Shift+click (``shiftClicked``) and Shift+drag (``vb.rectPicked``) pick tiles for labelling.
    """

    clicked = Signal(float, float)
    shiftClicked = Signal(float, float)
    hovered = Signal(float, float)
    firstPaint = Signal()
    stepKey = Signal(int, int)  # arrow keys: (d_row, d_col)

    MAX_LIVE_ITEMS = TileLayer.MAX_LIVE_ITEMS

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, background=CANVAS_BG)
        self.vb = PickViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.vb.setBorder(None)
        self.setCentralItem(self.vb)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        self.base = QGraphicsPixmapItem()
        self.base.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.base.setZValue(-100)
        self.vb.addItem(self.base)
        # Grid overlays (one pixel per tile) cover whole tiles, past the slide's right and bottom
        # edges; a parent the size of the slide clips them to it.
        self.slide_clip = QGraphicsRectItem()
        self.slide_clip.setPen(QPen(Qt.PenStyle.NoPen))
        self.slide_clip.setFlag(QGraphicsRectItem.GraphicsItemFlag.ItemClipsChildrenToShape, True)
        self.slide_clip.setZValue(5)
        self.vb.addItem(self.slide_clip)
        self.tissue_item = pg.ImageItem(axisOrder="row-major")
        self.tissue_item.setZValue(5)
        self.tissue_item.setVisible(False)
        self.tissue_item.setParentItem(self.slide_clip)
        self.overlay = pg.ImageItem(axisOrder="row-major")
        self.overlay.setZValue(10)
        self.overlay.setOpacity(0.45)
        self.overlay.setParentItem(self.slide_clip)
        self.hatch = HatchItem()
        self.hatch.setZValue(10.5)  # over the grey tint, under the category contours
        self.hatch.setParentItem(self.slide_clip)
        self.selection = QGraphicsRectItem()
        pen = QPen(QColor("#00e5ff"), 2)
        pen.setCosmetic(True)
        self.selection.setPen(pen)
        self.selection.setZValue(20)
        self.selection.setVisible(False)
        self.vb.addItem(self.selection)
        self.label = pg.TextItem(anchor=(0, 0))
        self.label.setZValue(30)
        self.label.setVisible(False)
        self.vb.addItem(self.label)
        self.regions: list[RegionGraphics] = []
        self.contours: list[QGraphicsPathItem] = []
        self.label_outlines: list[QGraphicsPathItem] = []
        self.cell_outlines: list[QGraphicsPathItem] = []
        self.picked = QGraphicsPathItem()
        pen = QPen(QColor("#00e5ff"), 2)
        pen.setCosmetic(True)
        self.picked.setPen(pen)
        self.picked.setBrush(QBrush(QColor(0, 229, 255, 55)))
        self.picked.setZValue(19)
        self.vb.addItem(self.picked)

        self.scale_bar = ScaleBar(self)
        self.overview = Overview(self)
        self.overview.jump.connect(self.center_on)
        self.overview_share = 0.25
        """Largest share of the view's shorter side the overview may take (the kiosk's screen is small)."""
        self.overview_wanted = True
        """The user's choice (View → Overview); it shows only while part of the slide is out of view, where it
        covers no slide content that is not also elsewhere, and says where the view is."""
        self.empty_hint = EmptyHint(self)
        self.offer_open = True
        """Show the empty-canvas hint (the kiosk has its own waiting page and no Ctrl+O)."""

        self.opened: Opened | None = None
        self.tiles = TileLayer(self.vb)
        self.cache = self.tiles.cache
        self.requests: TileRequests | None = None
        self._painted = False
        self._update_timer = QTimer(self, singleShot=True, interval=25)
        self._update_timer.timeout.connect(self.update_tiles)
        self.vb.sigRangeChanged.connect(self._range_changed)
        # The view box settles its size after the widget's resize; the bar follows its transform
        # so it never shows a length measured on the old size.
        self.vb.sigTransformChanged.connect(self.place_overlays)
        self.scene().sigMouseClicked.connect(self._scene_clicked)
        self.scene().sigMouseMoved.connect(self._scene_moved)

    # -- slide ---------------------------------------------------------------------------------

    def set_slide(self, opened: Opened, requests: TileRequests) -> None:
        self.clear_slide()
        self.opened, self.requests = opened, requests
        self.set_base_image(opened)
        self._painted = False
        self.set_zoom_limits()
        self.fit()
        self.place_overlays()
        self.viewport().update()

    def set_opened(self, opened: Opened) -> None:
        """The same slide with updated info (a user-entered pixel size): only the scale bar changes."""
        self.opened = opened
        self.place_overlays()

    def set_base_image(self, opened: Opened) -> None:
        """The whole slide at thumbnail resolution, always under the pyramid tiles."""
        self.opened = opened
        w0, h0 = opened.info.dimensions
        self.slide_clip.setRect(QRectF(0, 0, w0, h0))
        bgra = opened.base.bgra
        self.base.setPixmap(QPixmap.fromImage(bgra_qimage(bgra)))
        self.base.setTransform(QTransform.fromScale(w0 / bgra.shape[1], h0 / bgra.shape[0]))
        self.overview.set_slide(opened.base.overview_rgb, (w0, h0), self._overview_px())
        self.empty_hint.hide()
        self.place_overlays()
        self._update_timer.start()

    def _overview_px(self) -> int:
        return max(48, min(OVERVIEW_PX, int(self.overview_share * min(self.width(), self.height()))))

    def clear_slide(self) -> None:
        self.tiles.clear()
        self.opened = None
        self.base.setPixmap(QPixmap())
        self.overlay.clear()
        self.hatch.set_rects(np.zeros((0, 4)))
        self.tissue_item.clear()
        self.selection.setVisible(False)
        self.label.setVisible(False)
        self.set_regions(())
        self.set_contours(())
        self.set_cells(())
        self.set_label_outlines(())
        self.set_picked(())
        self.overview.hide()
        self.scale_bar.hide()
        self.empty_hint.setVisible(self.offer_open)
        self.place_overlays()

    def fit(self) -> None:
        if self.opened is not None:
            w0, h0 = self.opened.info.dimensions
            self.vb.setRange(QRectF(0, 0, w0, h0), padding=0.02)

    def set_zoom_limits(self) -> None:
        """Zoom bounded at both ends (``MAX_SCREEN_PX_PER_L0``, ``MIN_SLIDE_SHARE``), for the view's size now."""
        if self.opened is None:
            self.vb.setLimits(minXRange=None, maxXRange=None, minYRange=None, maxYRange=None)
            return
        w0, h0 = self.opened.info.dimensions
        vw, vh = max(1, self.width()), max(1, self.height())
        most_x = max(w0, h0 * vw / vh) / MIN_SLIDE_SHARE  # the range (level-0 px) across the view's width
        self.vb.setLimits(minXRange=vw / MAX_SCREEN_PX_PER_L0, maxXRange=most_x,
                          minYRange=vh / MAX_SCREEN_PX_PER_L0, maxYRange=most_x * vh / vw)

    def whole_slide_in_view(self) -> bool:
        """Every pixel of the slide is on screen (the overview would only repeat it)."""
        if self.opened is None:
            return True
        w0, h0 = self.opened.info.dimensions
        view = self.visible_l0_rect()
        tol = 1e-6 * max(w0, h0)
        return (view.left() <= tol and view.top() <= tol and view.right() >= w0 - tol
                and view.bottom() >= h0 - tol)

    def show_overview(self, on: bool) -> None:
        """The user's choice (View → Overview); shown while part of the slide is out of view."""
        self.overview_wanted = bool(on)
        self.update_overview()

    def update_overview(self) -> None:
        self.overview.setVisible(self.opened is not None and self.overview_wanted and not self.whole_slide_in_view())

    def center_on(self, l0_x: float, l0_y: float) -> None:
        (x0, x1), (y0, y1) = self.vb.viewRange()
        w, h = x1 - x0, y1 - y0
        self.vb.setRange(QRectF(l0_x - w / 2, l0_y - h / 2, w, h), padding=0)

    def zoom(self, factor: float) -> None:
        self.vb.scaleBy((1 / factor, 1 / factor))

    def l0_per_screen_px(self) -> float:
        """Level-0 pixels per screen pixel, from the transform the slide is drawn with now.

        Not ``ViewBox.viewPixelSize``: pyqtgraph caches it, and a resize whose range change follows (a card
        shown above the kiosk's slide) left it stale, the scale bar 6 % short until the next zoom (issue 25).
        """
        m = self.vb.childTransform()  # level-0 → the view box's pixels (brought up to date first)
        scale = float(np.hypot(m.m11(), m.m12()))
        return 1.0 / scale if scale > 0 and np.isfinite(scale) else 1.0

    def visible_l0_rect(self) -> QRectF:
        (x0, x1), (y0, y1) = self.vb.viewRange()
        return QRectF(x0, y0, x1 - x0, y1 - y0)

    # -- overlays ------------------------------------------------------------------------------

    @staticmethod
    def _set_rgba(item: pg.ImageItem, rgba: np.ndarray | None, l0_rect: QRectF | None) -> None:
        if rgba is None:
            item.clear()
            return
        item.setImage(rgba, autoLevels=False, levels=None)
        if l0_rect is not None:
            item.setRect(l0_rect)

    def set_overlay(self, rgba: np.ndarray | None, l0_rect: QRectF | None = None) -> None:
        self._set_rgba(self.overlay, rgba, l0_rect)

    def set_out_of_domain(self, rects: np.ndarray) -> None:
        """Hatch these level-0 rectangles (out-of-domain cells); an empty array removes the hatching."""
        self.hatch.set_rects(rects)

    def set_tissue(self, rgba: np.ndarray | None, l0_rect: QRectF | None = None) -> None:
        self._set_rgba(self.tissue_item, rgba, l0_rect)

    def set_selection(self, rect: tuple[int, int, int, int] | None) -> None:
        if rect is None:
            self.selection.setVisible(False)
            return
        self.selection.setRect(QRectF(*rect))
        self.selection.setVisible(True)

    def set_regions(self, regions: Sequence[Region]) -> None:
        """Replace the malignant-region outlines, boxes and labels (three items per region)."""
        for g in self.regions:
            for item in g.items():
                self.vb.removeItem(item)
        self.regions = [region_graphics(r) for r in regions]
        for g in self.regions:
            for item in g.items():
                self.vb.addItem(item)
        self.place_region_labels()

    def place_region_labels(self) -> None:
        """Each region's label above its box, moved inside the view when the view's edge would cut it (a region
        at the right edge of the view had "#2 0.0321 mm²" clipped)."""
        if not self.regions:
            return
        view = self.visible_l0_rect()
        k = self.l0_per_screen_px()
        for g in self.regions:
            x, y, w, h = g.region.bbox
            text = g.label.textItem.boundingRect()  # screen pixels: the label keeps its size at every zoom
            lw, lh = (text.width() + 4) * k, (text.height() + 4) * k  # with a few pixels to spare
            px, py = float(x), float(y)  # the label's bottom-left: on the box's top-left corner
            if view.intersects(QRectF(x, y, w, h)):
                px = max(min(px, view.right() - lw), view.left())
                py = max(py, view.top() + lh)
            g.label.setPos(px, py)

    def _swap(self, old: list[QGraphicsPathItem], new: list[QGraphicsPathItem]) -> list[QGraphicsPathItem]:
        for item in old:
            self.vb.removeItem(item)
        for item in new:
            self.vb.addItem(item)
        return new

    def set_contours(self, contours: Sequence[Contour]) -> None:
        """Replace the category contours (two path items per category: casing and colour)."""
        self.contours = self._swap(self.contours, [item for c in contours for item in contour_items(c)])

    def set_cells(self, cells: Sequence[np.ndarray], nuclei: Sequence[np.ndarray] = ()) -> None:
        """Replace the stained-cell outlines and their nuclei (level-0 polygons; none: remove them)."""
        self.cell_outlines = self._swap(self.cell_outlines, cell_items(cells, nuclei))

    def set_label_outlines(self, contours: Sequence[Contour]) -> None:
        """Replace the labels' outlines (two path items per label: casing and dashed colour)."""
        self.label_outlines = self._swap(self.label_outlines, [item for c in contours for item in contour_items(c, dashed=True)])

    def set_picked(self, rects: Sequence[tuple[float, float, float, float]]) -> None:
        """The tiles picked for labelling, as (x, y, w, h) level-0 rectangles, tinted cyan."""
        path = QPainterPath()
        for x, y, w, h in rects:
            path.addRect(QRectF(x, y, w, h))
        self.picked.setPath(path)

    def set_label(self, html: str | None) -> None:
        if not html:
            self.label.setVisible(False)
            return
        self.label.setHtml(html)
        self.label.setPos(0, 0)
        self.label.setVisible(True)

    # -- events --------------------------------------------------------------------------------

    def _range_changed(self, *args) -> None:
        # Apply the new range's transform now: its sigTransformChanged places the overlays, once per step
        # (calling place_overlays here too ran it twice, the second nested in the first's viewPixelSize).
        self.vb.updateMatrix()
        self._update_timer.start()

    def place_overlays(self) -> None:
        mpp = self.opened.info.mpp.um if self.opened and self.opened.info.mpp else None
        self.scale_bar.set_scale(mpp, self.l0_per_screen_px(), self.width())
        self.scale_bar.move(14, self.height() - self.scale_bar.height() - 12)
        if self.opened is not None:
            self.overview.fit(self._overview_px())
        self.overview.move(self.width() - self.overview.width() - 12, 12)
        self.overview.set_view(self.visible_l0_rect())
        self.update_overview()
        self.place_region_labels()
        if self.empty_hint.isVisible():
            self.empty_hint.adjustSize()
            self.empty_hint.move(max(0, (self.width() - self.empty_hint.width()) // 2),
                                 max(0, (self.height() - self.empty_hint.height()) // 2))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if not hasattr(self, "empty_hint"):  # called by the base class before __init__ finishes
            return
        self.set_zoom_limits()
        self.place_overlays()
        self._update_timer.start()

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.key() in ARROW_STEPS:
            self.stepKey.emit(*ARROW_STEPS[event.key()])
            event.accept()
            return
        super().keyPressEvent(event)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().paintEvent(event)
        if self.opened is not None and not self._painted:
            self._painted = True
            QTimer.singleShot(0, self.firstPaint.emit)

    def _scene_clicked(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton or event.double():
            return
        p = self.vb.mapSceneToView(event.scenePos())
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.shiftClicked.emit(p.x(), p.y())
        else:
            self.clicked.emit(p.x(), p.y())

    def _scene_moved(self, scene_pos: QPointF) -> None:
        if self.vb.sceneBoundingRect().contains(scene_pos):
            p = self.vb.mapSceneToView(scene_pos)
            self.hovered.emit(p.x(), p.y())

    # -- pyramid tiles (canvas/tiles.py) -------------------------------------------------------

    def update_tiles(self) -> None:
        if self.opened is not None and self.requests is not None:
            self.tiles.update(self.opened, self.requests, self.visible_l0_rect(), self.l0_per_screen_px())

    def tile_loaded(self, tile: TileLoaded) -> None:
        if self.tiles.loaded(tile):
            self._update_timer.start()  # every wanted tile is in: drop the stand-ins

    def _level_for(self, l0_per_px: float) -> int | None:
        return self.tiles.level_for(self.opened, l0_per_px)

    @property
    def _items(self) -> dict:
        return self.tiles.items

    @property
    def live_tile_items(self) -> int:
        return len(self.tiles.items)
