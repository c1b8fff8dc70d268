"""The slide canvas: a pyqtgraph ViewBox in level-0 pixels with pyramid tiles, overlays and a scale bar.

Only the tiles visible at the zoom's pyramid level are drawn; they are read by loader workers
(each with its own slide handle), kept in a byte-bounded LRU cache, and the thumbnail (plus any
cached coarser tiles) stays underneath until the sharper ones arrive.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRect, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QFontMetrics,
    QImage,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QPolygonF,
    QTransform,
)
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from cellview.analysis.morphology import Region
from cellview.gui.tasks import VIEW_TILE_PX, TileKey, TileLoaded, TileRequests
from cellview.outputs.legend import ScaleBarSpec, scale_bar
from cellview.outputs.overlay import CASING_RGB, HATCH_ALPHA, HATCH_RGB, HATCH_SPACING_PX, HATCH_WIDTH_PX, Contour
from cellview.viewer.slide import OVERVIEW_PX, Opened

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

CANVAS_BG = "#262a2e"

ARROW_STEPS = {Qt.Key.Key_Left: (0, -1), Qt.Key.Key_Right: (0, 1), Qt.Key.Key_Up: (-1, 0), Qt.Key.Key_Down: (1, 0)}
"""Arrow key -> (d_row, d_col) for stepping the tile selection."""


def rgb_qimage(rgb: np.ndarray) -> QImage:
    """A QImage that owns a copy of an RGB/RGBA uint8 array."""
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    fmt = QImage.Format.Format_RGBA8888 if rgb.shape[2] == 4 else QImage.Format.Format_RGB888
    return QImage(rgb.data, w, h, rgb.strides[0], fmt).copy()


def bgra_qimage(bgra: np.ndarray, opaque: bool = True) -> QImage:
    """Wrap BGRA bytes as the raster engine's native format (no per-paint conversion)."""
    fmt = QImage.Format.Format_RGB32 if opaque else QImage.Format.Format_ARGB32_Premultiplied
    return QImage(bgra.data, bgra.shape[1], bgra.shape[0], bgra.strides[0], fmt)


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


class ScaleBar(QWidget):
    """Bottom-left scale bar in µm, redrawn as the zoom changes; hidden without a known scale.

    Its length is ``legend.scale_bar``'s (the longest 1-2-5 length that fits): the bar is drawn
    exactly that many pixels long and the box is sized around the bar and its label, so nothing
    is ever clipped and the label is right at every zoom and font size.
    """

    BASE_PT = 9.5
    MAX_BAR_PX = 160
    """The bar's longest length at the base font (it grows with the font)."""
    MAX_VIEW_SHARE = 0.25
    """…and never more than this share of the view's width (a small kiosk screen)."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.mpp_um: float | None = None
        self.l0_per_screen_px = 1.0
        self.view_width_px: int | None = None
        self.font_pt = self.BASE_PT
        self.spec: ScaleBarSpec | None = None
        self.hide()

    @property
    def k(self) -> float:
        return self.font_pt / self.BASE_PT

    def set_font_pt(self, pt: float) -> None:
        """Text size of the label (the kiosk's is read from a metre away); the bar's room grows with it."""
        self.font_pt = float(pt)
        self._fit()

    def label_font(self) -> QFont:
        f = QFont(self.font())
        f.setPointSizeF(self.font_pt)
        return f

    def max_bar_px(self) -> float:
        longest = self.MAX_BAR_PX * self.k
        if self.view_width_px:
            longest = min(longest, self.MAX_VIEW_SHARE * self.view_width_px)
        return longest

    def set_scale(self, mpp_um: float | None, l0_per_screen_px: float, view_width_px: int | None = None) -> None:
        self.mpp_um, self.l0_per_screen_px = mpp_um, l0_per_screen_px
        if view_width_px is not None:
            self.view_width_px = view_width_px
        self._fit()

    def _fit(self) -> None:
        um_per_px = self.mpp_um * self.l0_per_screen_px if self.mpp_um and self.l0_per_screen_px > 0 else None
        self.spec = scale_bar(um_per_px, self.max_bar_px())
        self.setVisible(self.spec is not None)
        if self.spec is not None:
            fm = QFontMetrics(self.label_font())
            pad, bar_h = self._pad(), self._bar_h()
            width = max(self.spec.drawn_px, fm.horizontalAdvance(self.spec.label)) + 2 * pad
            self.resize(width, pad + fm.height() + pad // 2 + bar_h + pad)
        self.update()

    def _pad(self) -> int:
        return max(6, int(round(8 * self.k)))

    def _bar_h(self) -> int:
        return max(4, int(round(5 * self.k)))

    def bar_rect(self) -> QRect:
        """Where the bar is drawn, in this widget's pixels: exactly ``spec.drawn_px`` wide."""
        if self.spec is None:
            return QRect()
        pad, bar_h = self._pad(), self._bar_h()
        return QRect(pad, self.height() - pad - bar_h, self.spec.drawn_px, bar_h)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        spec = self.spec
        if spec is None:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(20, 22, 25, 190))
        p.drawRoundedRect(QRectF(self.rect()), 5, 5)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        p.fillRect(self.bar_rect(), QColor("white"))
        p.setPen(QColor("white"))
        p.setFont(self.label_font())
        pad = self._pad()
        p.drawText(QRect(pad, pad, self.width() - 2 * pad, QFontMetrics(self.label_font()).height()),
                   Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, spec.label)
        p.end()


class Overview(QWidget):
    """Thumbnail with the current view box; click or drag to jump there."""

    jump = Signal(float, float)  # level-0 centre

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        # Opaque: its updates never force the slide canvas underneath to repaint.
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self._image: QImage | None = None
        self._l0_size = (1, 1)
        self._view = QRectF()
        self.setToolTip("Overview: click to jump")
        self.hide()

    def set_slide(self, thumb: np.ndarray, l0_size: tuple[int, int], max_px: int | None = None) -> None:
        """``thumb`` is already overview-sized (prepared in the open worker); shown at most ``max_px``."""
        self._full, self._l0_size = rgb_qimage(thumb), l0_size
        self.fit(max_px or max(self._full.width(), self._full.height()))
        self.show()

    def fit(self, max_px: int) -> None:
        """Longest side at most ``max_px`` (the view gives it a share of its own size)."""
        full = getattr(self, "_full", None)
        if full is None:
            return
        if max(full.width(), full.height()) > max_px:
            self._image = full.scaled(max_px, max_px, Qt.AspectRatioMode.KeepAspectRatio,
                                      Qt.TransformationMode.SmoothTransformation)
        else:
            self._image = full
        self.resize(self._image.width() + 4, self._image.height() + 4)
        self.update()

    def set_view(self, rect: QRectF) -> None:
        self._view = rect
        self.update()

    def _scale(self) -> float:
        return self._image.width() / self._l0_size[0] if self._image else 1.0

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self._image is None:
            return
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(15, 17, 19))
        p.drawImage(2, 2, self._image)
        k = self._scale()
        r = QRectF(2 + self._view.x() * k, 2 + self._view.y() * k, self._view.width() * k, self._view.height() * k)
        r = r.intersected(QRectF(2, 2, self._image.width(), self._image.height()))
        p.setPen(QPen(QColor("#ffd400"), 2))
        p.drawRect(r)
        p.setPen(QPen(QColor(90, 95, 100), 1))
        p.drawRect(self.rect().adjusted(0, 0, -1, -1))
        p.end()

    def _emit(self, pos: QPointF) -> None:
        k = self._scale()
        self.jump.emit((pos.x() - 2) / k, (pos.y() - 2) / k)

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt API
        self._emit(event.position())

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._emit(event.position())


REGION_COLOR = "#ffd400"
"""Region outlines: yellow stays visible over the red malignant tint and the pink stain alike."""


@dataclass
class RegionGraphics:
    """The three scene items of one malignant region (level-0 coordinates, cosmetic pens)."""

    region: Region
    outline: QGraphicsPathItem  # outline and holes, one path
    box: QGraphicsRectItem  # dashed bounding box
    label: pg.TextItem  # "#1 0.54 mm²", above the box, constant size on screen

    @property
    def text(self) -> str:
        return self.label.toPlainText().strip()  # without the &nbsp; padding

    def items(self) -> tuple:
        return self.outline, self.box, self.label


def region_label(region: Region) -> str:
    return f"#{region.rank} {region.label()}"


def region_path(region: Region) -> QPainterPath:
    """Outline and holes as closed subpaths (odd-even fill: holes stay holes if ever filled)."""
    path = QPainterPath()
    path.setFillRule(Qt.FillRule.OddEvenFill)
    for ring in region.rings:
        path.addPolygon(QPolygonF([QPointF(float(x), float(y)) for x, y in ring]))
        path.closeSubpath()
    return path


def _region_graphics(region: Region) -> RegionGraphics:
    color = QColor(REGION_COLOR)
    outline = QGraphicsPathItem(region_path(region))
    pen = QPen(color, 2.5)
    pen.setCosmetic(True)
    pen.setJoinStyle(Qt.PenJoinStyle.MiterJoin)
    outline.setPen(pen)
    outline.setZValue(15)
    box = QGraphicsRectItem(QRectF(*region.bbox))
    dash = QPen(color, 1.2, Qt.PenStyle.DashLine)
    dash.setCosmetic(True)
    box.setPen(dash)
    box.setZValue(15)
    label = pg.TextItem(anchor=(0, 1))
    label.setHtml(f"<div style='background-color:rgba(20,22,25,200); color:{REGION_COLOR}; "
                  f"font-size:10pt; font-weight:600;'>&nbsp;{escape(region_label(region))}&nbsp;</div>")
    label.setPos(region.bbox[0], region.bbox[1])
    label.setZValue(25)
    return RegionGraphics(region, outline, box, label)


def contour_path(segments: np.ndarray) -> QPainterPath:
    """Level-0 line segments (N, 4) as one path of separate strokes."""
    path = QPainterPath()
    for x0, y0, x1, y1 in segments:
        path.moveTo(float(x0), float(y0))
        path.lineTo(float(x1), float(y1))
    return path


def _contour_items(contour: Contour, dashed: bool = False) -> tuple[QGraphicsPathItem, QGraphicsPathItem]:
    """A dark casing under the category-coloured line: legible over pale glass and dark nuclei alike.

    ``dashed``: a label's outline (above the categories', the coloured line dashed).
    """
    path = contour_path(contour.segments)
    items = []
    z = 13 if dashed else 11
    style = Qt.PenStyle.DashLine if dashed else Qt.PenStyle.SolidLine
    for color, width, zz, pen_style in ((QColor(*CASING_RGB, 200), 5.0, z, Qt.PenStyle.SolidLine),
                                        (QColor(contour.color), 3.0, z + 1, style)):
        item = QGraphicsPathItem(path)
        pen = QPen(color, width, pen_style)
        pen.setCosmetic(True)
        pen.setCapStyle(Qt.PenCapStyle.SquareCap)
        pen.setJoinStyle(Qt.PenJoinStyle.MiterJoin)
        item.setPen(pen)
        item.setZValue(zz)
        items.append(item)
    return items[0], items[1]


_HATCH_TILE: list[QPixmap] = []


def hatch_tile() -> QPixmap:
    """One period of the out-of-domain hatching (``HATCH_SPACING_PX`` square, seamless), drawn once.

    Filling with it as a texture brush in device pixels costs about what the grey tint costs;
    stroking every antialiased line through a clip path cost ten times more on a full canvas.
    """
    if not _HATCH_TILE:
        step = HATCH_SPACING_PX
        pm = QPixmap(step, step)
        pm.fill(Qt.GlobalColor.transparent)
        p = QPainter(pm)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        for color, width in ((QColor(*CASING_RGB, HATCH_ALPHA[0]), HATCH_WIDTH_PX + 2),
                             (QColor(*HATCH_RGB, HATCH_ALPHA[1]), HATCH_WIDTH_PX)):
            pen = QPen(color, width)
            pen.setCapStyle(Qt.PenCapStyle.FlatCap)
            p.setPen(pen)
            for c in (0, step, 2 * step):  # the lines x + y = c that cross the tile: its copies join up
                p.drawLine(QPointF(c + 1, -1), QPointF(-1, c + 1))
        p.end()
        _HATCH_TILE.append(pm)
    return _HATCH_TILE[0]


def paint_hatch(p: QPainter, rect: QRectF, origin: QPointF | None = None) -> None:
    """Diagonal out-of-domain hatching over ``rect`` in device pixels (light lines on a dark casing),
    anchored at ``origin`` so it moves with the slide."""
    p.setBrushOrigin(origin if origin is not None else QPointF(0, 0))
    p.fillRect(rect, QBrush(hatch_tile()))


class HatchItem(QGraphicsItem):
    """Out-of-domain cells hatched with diagonal lines of constant screen spacing and width.

    The cells (level-0 rectangles) are filled in device pixels with a texture of one period of the
    lines (``hatch_tile``), anchored at the slide's origin so the lines move with it when panning and
    stay fine when zooming. A Qt pattern brush would be one hair-thin pixel; the same texture in
    scene coordinates would scale with the zoom.
    """

    def __init__(self) -> None:
        super().__init__()
        self._path = QPainterPath()
        self.rects = np.zeros((0, 4), np.float64)

    def set_rects(self, rects: np.ndarray) -> None:
        """(N, 4) x, y, width, height in level-0 pixels (``overlay.out_of_domain_runs``)."""
        self.prepareGeometryChange()
        self.rects = np.asarray(rects, np.float64).reshape(-1, 4)
        path = QPainterPath()
        for x, y, w, h in self.rects:
            path.addRect(QRectF(float(x), float(y), float(w), float(h)))
        self._path = path
        self.update()

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt API
        return self._path.boundingRect()

    def shape(self) -> QPainterPath:
        return self._path

    def paint(self, p: QPainter, option, widget=None) -> None:
        if self._path.isEmpty():
            return
        t = p.worldTransform()
        p.save()
        p.resetTransform()  # device pixels: the hatching keeps its spacing and width at every zoom
        p.setBrushOrigin(t.map(QPointF(0, 0)))  # … and moves with the slide
        p.fillPath(t.map(self._path), QBrush(hatch_tile()))
        p.restore()


class EmptyHint(QFrame):
    """What an empty canvas says: how to open a slide, and the recent ones as buttons."""

    openRequested = Signal()
    recentRequested = Signal(str)
    MAX_RECENT = 6

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("emptyHint")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(28, 22, 28, 22)
        lay.setSpacing(8)
        self.title = QLabel("Open a slide (Ctrl+O) or drop one here")
        self.title.setObjectName("emptyTitle")
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(self.title)
        self.open_btn = QPushButton("Open slide or image…")
        self.open_btn.setObjectName("primary")
        self.open_btn.clicked.connect(self.openRequested)
        lay.addWidget(self.open_btn, 0, Qt.AlignmentFlag.AlignCenter)
        self.recent_title = QLabel("Recent slides")
        self.recent_title.setObjectName("emptyRecentTitle")
        lay.addWidget(self.recent_title)
        self.recent_box = QVBoxLayout()
        self.recent_box.setSpacing(2)
        lay.addLayout(self.recent_box)
        self.recent_buttons: list[QPushButton] = []
        self.set_recent([])

    def set_recent(self, recent: Sequence[tuple[str, str]]) -> None:
        """(path, display name) of recent slides, newest first."""
        for btn in self.recent_buttons:
            self.recent_box.removeWidget(btn)
            btn.deleteLater()
        self.recent_buttons = []
        for path, name in list(recent)[: self.MAX_RECENT]:
            btn = QPushButton(name)
            btn.setObjectName("recentSlide")
            btn.setToolTip(path)
            btn.setFlat(True)
            btn.setCursor(Qt.CursorShape.PointingHandCursor)
            btn.clicked.connect(lambda _c=False, p=path: self.recentRequested.emit(p))
            self.recent_box.addWidget(btn)
            self.recent_buttons.append(btn)
        self.recent_title.setVisible(bool(self.recent_buttons))
        self.adjustSize()


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

    MAX_LIVE_ITEMS = 160

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
        self.empty_hint = EmptyHint(self)
        self.offer_open = True
        """Show the empty-canvas hint (the kiosk has its own waiting page and no Ctrl+O)."""

        self.opened: Opened | None = None
        self.cache = TileCache()
        self.requests: TileRequests | None = None
        self._items: dict[TileKey, QGraphicsPixmapItem] = {}
        self._wanted: set[TileKey] = set()
        self._painted = False
        self._mode = Qt.TransformationMode.SmoothTransformation
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
        for item in self._items.values():
            self.vb.removeItem(item)
        self._items.clear()
        self._wanted.clear()
        self.cache.clear()
        self.opened = None
        self.base.setPixmap(QPixmap())
        self.overlay.clear()
        self.hatch.set_rects(np.zeros((0, 4)))
        self.tissue_item.clear()
        self.selection.setVisible(False)
        self.label.setVisible(False)
        self.set_regions(())
        self.set_contours(())
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

    def center_on(self, l0_x: float, l0_y: float) -> None:
        (x0, x1), (y0, y1) = self.vb.viewRange()
        w, h = x1 - x0, y1 - y0
        self.vb.setRange(QRectF(l0_x - w / 2, l0_y - h / 2, w, h), padding=0)

    def zoom(self, factor: float) -> None:
        self.vb.scaleBy((1 / factor, 1 / factor))

    def l0_per_screen_px(self) -> float:
        px = self.vb.viewPixelSize()[0]
        return float(px) if px and np.isfinite(px) else 1.0

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
        self.regions = [_region_graphics(r) for r in regions]
        for g in self.regions:
            for item in g.items():
                self.vb.addItem(item)

    def _swap(self, old: list[QGraphicsPathItem], new: list[QGraphicsPathItem]) -> list[QGraphicsPathItem]:
        for item in old:
            self.vb.removeItem(item)
        for item in new:
            self.vb.addItem(item)
        return new

    def set_contours(self, contours: Sequence[Contour]) -> None:
        """Replace the category contours (two path items per category: casing and colour)."""
        self.contours = self._swap(self.contours, [item for c in contours for item in _contour_items(c)])

    def set_label_outlines(self, contours: Sequence[Contour]) -> None:
        """Replace the labels' outlines (two path items per label: casing and dashed colour)."""
        self.label_outlines = self._swap(self.label_outlines, [item for c in contours for item in _contour_items(c, dashed=True)])

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
        if self.empty_hint.isVisible():
            self.empty_hint.adjustSize()
            self.empty_hint.move(max(0, (self.width() - self.empty_hint.width()) // 2),
                                 max(0, (self.height() - self.empty_hint.height()) // 2))

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if not hasattr(self, "empty_hint"):  # called by the base class before __init__ finishes
            return
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

    # -- pyramid tiles -------------------------------------------------------------------------

    def _level_for(self, l0_per_px: float) -> int | None:
        """Pyramid level for this zoom, or None where the thumbnail is already sharp enough.

        Only usable levels: one the level check skipped (wrong colours) is never drawn.
        """
        info = self.opened.info
        thumb_ds = info.dimensions[0] / self.opened.thumbnail.shape[1]
        if l0_per_px >= thumb_ds * 0.95:
            return None
        # A level up to 1.25x coarser than the screen is still crisp and has 1.5-16x fewer pixels to draw.
        best = 0
        for level in info.usable_levels:
            if info.level_downsamples[level] <= l0_per_px * 1.25:
                best = level
        return best

    def _keys_in(self, level: int, rect: QRectF) -> list[TileKey]:
        info = self.opened.info
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

    def update_tiles(self) -> None:
        """Show cached tiles of the right level, ask the loaders for the rest, drop the others."""
        if self.opened is None or self.requests is None:
            return
        rect = self.visible_l0_rect()
        l0_per_px = self.l0_per_screen_px()
        level = self._level_for(l0_per_px)
        # Magnified pixels are drawn as pixels (no seams between tiles, honest at high zoom);
        # minified ones are filtered so textures do not alias.
        smooth = level is None or l0_per_px >= self.opened.info.level_downsamples[level]
        mode = Qt.TransformationMode.SmoothTransformation if smooth else Qt.TransformationMode.FastTransformation
        if mode != self._mode:
            self._mode = mode
            for item in self._items.values():
                item.setTransformationMode(mode)
        wanted: list[TileKey] = [] if level is None else self._keys_in(level, rect)
        wanted = wanted[: self.MAX_LIVE_ITEMS // 2]
        self._wanted = set(wanted)
        missing = [k for k in wanted if k not in self.cache]
        self.requests.replace(missing)
        show = {k for k in wanted if k in self.cache}
        if missing and level is not None:
            # Coarser cached tiles stand in until the sharp ones arrive.
            for coarser in (lv for lv in self.opened.info.usable_levels if lv > level):
                show.update(k for k in self._keys_in(coarser, rect) if k in self.cache)
        for key in list(self._items):
            if key not in show:
                self.vb.removeItem(self._items.pop(key))
        for key in sorted(show, key=lambda k: -k[0]):
            if key not in self._items and len(self._items) < self.MAX_LIVE_ITEMS:
                self._add_item(self.cache.get(key))

    def _add_item(self, tile: TileLoaded | None) -> None:
        if tile is None:
            return
        item = QGraphicsPixmapItem(QPixmap.fromImage(bgra_qimage(tile.bgra, tile.opaque)))
        item.setTransformationMode(self._mode)
        x, y, w, h = tile.l0_rect
        item.setPos(x, y)
        item.setTransform(QTransform.fromScale(w / tile.bgra.shape[1], h / tile.bgra.shape[0]))
        item.setZValue(-50 - tile.key[0])
        self.vb.addItem(item)
        self._items[tile.key] = item

    def tile_loaded(self, tile: TileLoaded) -> None:
        self.cache.put(tile)
        if tile.key in self._wanted and tile.key not in self._items:
            self._add_item(tile)
            if all(k in self._items for k in self._wanted):
                self._update_timer.start()  # drop the stand-ins

    @property
    def live_tile_items(self) -> int:
        return len(self._items)
