"""Whole lines in the kiosk's scrolling areas: no text is ever shown sliced through a line at a scroll area's edge.

A finger-scrolled column (the waiting page, the case's touch panel, a tapped tile's sheet) stops where the finger
left it, and its viewport ends wherever the screen does: at 800 × 480 the waiting page's model line and the
result note were cut mid-line, and the tile sheet showed one and a half probability rows. ``WholeLines`` keeps a
scroll area's edges on line boundaries: its kinetic scrolling snaps to them, and an opaque strip (``Mask``) in
the area's own colour covers the part of a line that the top or bottom edge would cut. A line boundary is where
no text is cut: between the lines of a label, between a text-bearing widget and the next, between the rows of
a widget that says where its rows are (``row_boundaries()``); pictures and sliders may be cut anywhere.
"""

from __future__ import annotations

import bisect

from PySide6 import QtGui
from PySide6.QtCore import QEvent, QObject, QPoint, Qt, QTimer
from PySide6.QtGui import QColor, QFontMetrics, QPainter
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractScrollArea,
    QComboBox,
    QLabel,
    QProgressBar,
    QScrollArea,
    QScroller,
    QScrollerProperties,
    QWidget,
)


def label_lines(label: QLabel) -> list[int]:
    """Boundaries between a plain label's lines, in its own pixels (top and bottom of its text included)."""
    text = label.text()
    if not text or label.pixmap() is not None and not label.pixmap().isNull():
        return []
    cr = label.contentsRect()
    fm = QFontMetrics(label.font())
    if label.textFormat() != Qt.TextFormat.PlainText and QtGui.Qt.mightBeRichText(text):
        return [cr.top(), cr.bottom() + 1]  # mixed sizes: the label as one block
    flags = int(Qt.TextFlag.TextWordWrap) if label.wordWrap() else 0
    height = fm.boundingRect(0, 0, max(1, cr.width()), 100000, flags, text).height()
    wanted = label.heightForWidth(label.width()) if label.wordWrap() else -1
    if wanted > 0:  # the label's own layout, as it paints: on X11 a line with a fallback glyph ("⚠") made it a
        height = max(height, wanted - (label.height() - cr.height()))  # line longer than the metrics' estimate
    n = max(1, round(height / fm.lineSpacing()))
    align = label.alignment()
    top = cr.top() + label.margin()
    if align & Qt.AlignmentFlag.AlignVCenter:
        top = cr.top() + (cr.height() - height) // 2
    elif align & Qt.AlignmentFlag.AlignBottom:
        top = cr.bottom() + 1 - height
    return [top + round(k * height / n) for k in range(n + 1)]


def _says_something(w: QWidget) -> bool:
    return isinstance(w, (QAbstractButton, QComboBox)) or (isinstance(w, QProgressBar) and w.isTextVisible())


class WholeLines(QObject):
    """Keeps ``scroll``'s top and bottom edges between lines of text (module docstring). ``colour``: the area's
    background, which the masks paint."""

    def __init__(self, scroll: QAbstractScrollArea, colour: str) -> None:
        super().__init__(scroll)
        self.scroll = scroll
        self.top_mask = Mask(scroll.viewport(), colour)
        self.bottom_mask = Mask(scroll.viewport(), colour)
        self._pending = False
        scroll.verticalScrollBar().valueChanged.connect(lambda _v: self.update())
        scroll.verticalScrollBar().rangeChanged.connect(lambda _a, _b: self.update_soon())
        scroll.viewport().installEventFilter(self)
        content = self.content()
        if content is not None:
            content.installEventFilter(self)
        if isinstance(scroll, QAbstractItemView):
            model = scroll.model()
            for changed in (model.rowsInserted, model.rowsRemoved, model.modelReset, model.layoutChanged):
                changed.connect(lambda *_a: self.update_soon())

    def content(self) -> QWidget | None:
        """The scrolled widget (a QScrollArea's); None for a list, whose items are the blocks."""
        return self.scroll.widget() if isinstance(self.scroll, QScrollArea) else None

    def content_height(self) -> int:
        content = self.content()
        if content is not None:
            return content.height()
        return self.scroll.verticalScrollBar().maximum() + self.scroll.viewport().height()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() in (QEvent.Type.Resize, QEvent.Type.LayoutRequest, QEvent.Type.Show):
            self.update_soon()
        return False

    def update_soon(self) -> None:
        if not self._pending:
            self._pending = True
            QTimer.singleShot(0, self, self.update)  # dropped if the area goes first

    # ------------------------------------------------------------------------------ where text may be cut

    def blocks(self) -> list[tuple[int, int, list[int]]]:
        """(top, bottom, allowed cuts inside) of every widget (or list item) with text, in the content's pixels."""
        if isinstance(self.scroll, QAbstractItemView):
            return self.item_blocks()
        content = self.content()
        out: list[tuple[int, int, list[int]]] = []
        if content is None:
            return out
        for w in [content, *content.findChildren(QWidget)]:  # the content may itself be the text (a TextScroll)
            if not w.isVisibleTo(content) or w.height() <= 0:
                continue
            top = w.mapTo(content, QPoint(0, 0)).y()
            rows = getattr(w, "row_boundaries", None)
            if callable(rows):
                inner = [top + y for y in rows()]
            elif isinstance(w, QLabel):  # the text's own extent: a label taller than its text is cut anywhere else
                lines = label_lines(w)
                if lines:
                    out.append((top + lines[0], top + lines[-1], [top + y for y in lines]))
                continue
            elif _says_something(w):
                inner = []
            else:
                continue
            out.append((top, top + w.height(), inner))
        return out

    def item_blocks(self) -> list[tuple[int, int, list[int]]]:
        """A list's items (a per-pixel scrolling list: its value is in pixels): the lines of the label an item is
        drawn by (``setIndexWidget``), else the whole item as one block."""
        view = self.scroll
        value = view.verticalScrollBar().value()
        out = []
        for row in range(view.model().rowCount()):
            index = view.model().index(row, 0)
            r = view.visualRect(index)
            if r.height() <= 0:
                continue
            label = view.indexWidget(index)
            lines = label_lines(label) if isinstance(label, QLabel) else []
            if lines:
                top = label.y() + value  # the label's own place in the viewport
                out.append((top + lines[0], top + lines[-1], [top + y for y in lines]))
            else:
                out.append((r.top() + value, r.bottom() + 1 + value, []))
        return out

    def cuts(self) -> list[int]:
        """Every y (content pixels) where an edge cuts no line of text, sorted; 0 and the content's end included."""
        blocks = self.blocks()
        candidates = {0, self.content_height()}
        for top, bottom, inner in blocks:
            candidates.update((top, bottom, *inner))
        ok = []
        for y in sorted(candidates):
            if all(not (top < y < bottom) or y in inner for top, bottom, inner in blocks):
                ok.append(y)
        return ok

    # ------------------------------------------------------------------------------ edges on them

    @staticmethod
    def _slices(blocks: list[tuple[int, int, list[int]]], y: int) -> bool:
        return any(top < y < bottom and y not in inner for top, bottom, inner in blocks)

    def slices(self, y: int) -> bool:
        """An edge at ``y`` (content pixels) would cut a line of text."""
        return self._slices(self.blocks(), y)

    def update(self) -> None:
        self._pending = False
        if not self.scroll.isVisible() or (isinstance(self.scroll, QScrollArea) and self.content() is None):
            return
        blocks = self.blocks()
        cuts = self.cuts()
        value = self.scroll.verticalScrollBar().value()
        height = self.scroll.viewport().height()
        # a tap on an arrow moves a third of the view (Qt's 20 px step took a dozen taps to reach the classes)
        self.scroll.verticalScrollBar().setSingleStep(max(20, height // 3))
        top, bottom = value, value + height
        if self._slices(blocks, top):  # only text is covered: a picture or a slider may be cut anywhere
            i = bisect.bisect_right(cuts, top)
            top = cuts[i] if i < len(cuts) else top
        if self._slices(blocks, bottom):
            j = bisect.bisect_left(cuts, bottom) - 1
            bottom = cuts[j] if j >= 0 and cuts[j] > top else bottom
        width = self.scroll.viewport().width()
        self.top_mask.cover(0, 0, width, top - value)
        self.bottom_mask.cover(0, bottom - value, width, value + height - bottom)
        scroller = QScroller.scroller(self.scroll.viewport())
        maximum = self.scroll.verticalScrollBar().maximum()
        scroller.setSnapPositionsY([float(y) for y in cuts if y <= maximum] + [float(maximum)])

    def hidden_text(self) -> list[tuple[int, int]]:
        """(top, bottom) in the viewport's pixels of text partly in view and not masked: a test's view of it."""
        value = self.scroll.verticalScrollBar().value()
        height = self.scroll.viewport().height()
        shown_top = value + (self.top_mask.height() if self.top_mask.isVisible() else 0)
        shown_bottom = value + height - (self.bottom_mask.height() if self.bottom_mask.isVisible() else 0)
        sliced = []
        for top, bottom, inner in self.blocks():
            for y in (shown_top, shown_bottom):
                if top < y < bottom and y not in inner:
                    sliced.append((top - value, bottom - value))
        return sliced


class Mask(QWidget):
    """An opaque strip over the part of a line a scroll area's edge would cut."""

    def __init__(self, viewport: QWidget, colour: str) -> None:
        super().__init__(viewport)
        self.colour = QColor(colour)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.hide()

    def cover(self, x: int, y: int, w: int, h: int) -> None:
        if h <= 0:
            self.hide()
            return
        self.setGeometry(x, y, w, h)
        self.show()
        self.raise_()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.fillRect(self.rect(), self.colour)
        p.end()


def snap_scroller(scroll: QScrollArea) -> None:
    """Finger scrolling on ``scroll`` that ends on a snap position (``WholeLines`` sets them), never overshooting."""
    QScroller.grabGesture(scroll.viewport(), QScroller.ScrollerGestureType.LeftMouseButtonGesture)
    scroller = QScroller.scroller(scroll.viewport())
    props = scroller.scrollerProperties()
    props.setScrollMetric(QScrollerProperties.ScrollMetric.VerticalOvershootPolicy,
                          QScrollerProperties.OvershootPolicy.OvershootAlwaysOff)
    scroller.setScrollerProperties(props)
