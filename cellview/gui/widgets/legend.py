"""The Qt drawing of a ``legend.Legend`` (the viewer's "as shown" PNG): the same description the PIL
export draws, so the two legends say the same thing: the slide's call first (its headline in its colour,
then its evidence), the header, the counts, the notes, the classes and the closing lines.

Count rows follow ``legend.count_row_layout`` (the PIL legend's rule): figures right-aligned, on a line of their
own when the label would reach them. ``LegendPainter.boxes`` records every text's rectangle, so a test can
check that no two overlap at the fonts used."""

from __future__ import annotations

from PySide6.QtCore import QRect, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter

from cellview.gui.widgets.heatmap import hatch_swatch
from cellview.outputs.legend import OUT_OF_DOMAIN_SWATCH, Legend, LegendLine, call_colour, count_row_layout

INK = QColor(20, 20, 20)
KIND_COLOURS = {"info": INK, "hint": QColor(90, 90, 90), "warning": QColor(180, 0, 0), "region": QColor(120, 0, 0)}


def wrap_text(fm, text: str, width: int) -> list[str]:
    """Greedy word wrap with the painter's font metrics (legend lines never run past the panel)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and fm.horizontalAdvance(trial) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return [*lines, current] if current else lines


class LegendPainter:
    """Draws one legend in a column ``width`` wide from (x, y); ``boxes`` holds (text, rectangle) of every text."""

    LINE_PX = 18
    ROW_PX = 22

    def __init__(self, p: QPainter, x: int, width: int, base: QFont) -> None:
        self.p, self.x, self.width = p, x, width
        self.base = QFont(base)
        self.boxes: list[tuple[str, QRect]] = []

    def font(self, pt: int, bold: bool = False) -> QFontMetrics:
        f = QFont(self.base)
        f.setPointSize(pt)
        f.setBold(bold)
        self.p.setFont(f)
        return QFontMetrics(f)

    def text(self, x: float, y: int, s: str) -> None:
        """``s`` with its baseline at ``y``; its box recorded."""
        fm = self.p.fontMetrics()
        self.p.drawText(int(x), y, s)
        self.boxes.append((s, QRect(int(x), y - fm.ascent(), fm.horizontalAdvance(s), fm.height())))

    def line(self, y: int, item: LegendLine) -> int:
        fm = self.p.fontMetrics()
        self.p.setPen(KIND_COLOURS.get(item.kind, INK))
        parts = (wrap_text(fm, item.text, self.width) if item.wrap
                 else [fm.elidedText(item.text, Qt.TextElideMode.ElideRight, self.width)])
        for part in parts:
            self.text(self.x, y, part)
            y += self.LINE_PX
        return y

    def paint(self, legend: Legend, y: int) -> int:
        p, x = self.p, self.x
        self.font(15, bold=True)
        p.setPen(INK)
        self.text(x, y, "CellView")
        y += 26
        if legend.call is not None:  # the slide's call, as the files say it
            self.font(12, bold=True)
            p.setPen(QColor(call_colour(legend.call)))
            self.text(x, y, legend.call.headline)
            y += 20
            self.font(9)
            if legend.call.evidence:
                y = self.line(y, LegendLine(legend.call.evidence))
            y += 6
        fm = self.font(9)
        for item in legend.header:
            y = self.line(y, item)
        y += 10
        y = self.line(y, LegendLine(legend.counted))
        for row in legend.rows:
            if row.swatch == OUT_OF_DOMAIN_SWATCH:
                p.drawPixmap(x, y - 12, hatch_swatch(14))
            else:
                p.fillRect(QRectF(x, y - 12, 14, 14), QColor(row.swatch))
            label_x = x + 22
            label = fm.elidedText(row.label + (" (hidden)" if row.hidden else ""), Qt.TextElideMode.ElideRight,
                                  x + self.width - label_x)
            counts_x, own_line = count_row_layout(label_x + fm.horizontalAdvance(label), fm.horizontalAdvance(row.text),
                                                  x + self.width, 10)
            p.setPen(KIND_COLOURS["hint"] if row.hidden else INK)
            self.text(label_x, y, label)
            if own_line:
                y += self.LINE_PX
            p.setPen(INK)
            self.text(counts_x, y, row.text)
            y += self.ROW_PX
        y += 6
        for item in legend.notes:
            y = self.line(y, item)
        if legend.classes:
            y = self.line(y, LegendLine("Classes (tiles, counted as above)"))
            for row in legend.classes:
                p.fillRect(QRectF(x, y - 10, 10, 10), QColor(row.swatch))
                p.setPen(KIND_COLOURS["hint"] if row.hidden else INK)
                self.text(x + 16, y, fm.elidedText(f"{row.label}: {row.count:,}", Qt.TextElideMode.ElideRight,
                                                   self.width - 16))
                y += 16
            y += 4
        for item in legend.footer:
            y = self.line(y, item)
        return y


def paint_legend(p: QPainter, legend: Legend, x: int, y: int, width: int, base: QFont) -> int:
    """Draw ``legend`` from (x, y) in a column ``width`` wide; returns the y below it."""
    return LegendPainter(p, x, width, base).paint(legend, y)
