"""What the slide canvas draws besides the slide: region outlines, category contours, out-of-domain hatching,
and the QImages made from NumPy arrays.

Kept apart from the view (slideview) because they are pictures of the analysis, not navigation: the
legend panel paints the same hatching (paint_hatch) and the same images (rgb_qimage) as the canvas.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPainterPath, QPen, QPixmap, QPolygonF
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem, QGraphicsRectItem

from cellview.analysis.morphology import Region
from cellview.outputs.overlay import CASING_RGB, HATCH_ALPHA, HATCH_RGB, HATCH_SPACING_PX, HATCH_WIDTH_PX, Contour


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


def region_graphics(region: Region) -> RegionGraphics:
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


def contour_items(contour: Contour, dashed: bool = False) -> tuple[QGraphicsPathItem, QGraphicsPathItem]:
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


CELL_COLOR = "#ffffff"
"""Stained-cell outlines: white over a dark casing reads on the pale smear field, the violet nuclei and the
category contours alike (yellow is the regions', cyan the selection's)."""


def polygons_path(polygons) -> QPainterPath:
    """Level-0 (N, 2) polygons as one path of closed subpaths."""
    path = QPainterPath()
    for poly in polygons:
        path.addPolygon(QPolygonF([QPointF(float(x), float(y)) for x, y in poly]))
        path.closeSubpath()
    return path


def cell_items(cells, nuclei) -> list[QGraphicsPathItem]:
    """The stained cells (a white line on a dark casing) and their nuclei (a thin dotted white line): four items
    at most, however many cells (cosmetic pens, level-0 coordinates)."""
    items: list[QGraphicsPathItem] = []
    for polygons, layers in ((cells, ((QColor(*CASING_RGB, 190), 4.0, Qt.PenStyle.SolidLine, 16.0),
                                      (QColor(CELL_COLOR), 2.0, Qt.PenStyle.SolidLine, 16.5))),
                             (nuclei, ((QColor(*CASING_RGB, 150), 2.5, Qt.PenStyle.SolidLine, 16.2),
                                       (QColor(CELL_COLOR), 1.0, Qt.PenStyle.DotLine, 16.3)))):
        if not len(polygons):
            continue
        path = polygons_path(polygons)
        for color, width, style, z in layers:
            item = QGraphicsPathItem(path)
            pen = QPen(color, width, style)
            pen.setCosmetic(True)
            pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
            item.setPen(pen)
            item.setZValue(z)
            items.append(item)
    return items
