"""The Qt drawing of a ``legend.Legend`` (the viewer's "as shown" PNG): the same description the PIL
export draws, so the two legends say the same thing."""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QPainter

from cellview.gui.widgets.heatmap import hatch_swatch
from cellview.outputs.legend import OUT_OF_DOMAIN_SWATCH, Legend, LegendLine

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


def paint_legend(p: QPainter, legend: Legend, x: int, y: int, width: int, base: QFont) -> int:
    """Draw ``legend`` from (x, y) in a column ``width`` wide; returns the y below it."""
    f = QFont(base)
    f.setPointSize(15)
    f.setBold(True)
    p.setFont(f)
    p.setPen(INK)
    p.drawText(x, y, "CellView")
    f.setPointSize(9)
    f.setBold(False)
    p.setFont(f)
    fm = p.fontMetrics()
    y += 26

    def line(item: LegendLine) -> None:
        nonlocal y
        p.setPen(KIND_COLOURS.get(item.kind, INK))
        parts = (wrap_text(fm, item.text, width) if item.wrap
                 else [fm.elidedText(item.text, Qt.TextElideMode.ElideRight, width)])
        for part in parts:
            p.drawText(x, y, part)
            y += 18

    for item in legend.header:
        line(item)
    y += 10
    line(LegendLine(legend.counted))
    for row in legend.rows:
        if row.swatch == OUT_OF_DOMAIN_SWATCH:
            p.drawPixmap(x, y - 12, hatch_swatch(14))
        else:
            p.fillRect(QRectF(x, y - 12, 14, 14), QColor(row.swatch))
        p.setPen(KIND_COLOURS["hint"] if row.hidden else INK)
        p.drawText(x + 22, y, row.label + (" (hidden)" if row.hidden else ""))
        p.setPen(INK)
        p.drawText(x + 150, y, f"{row.count:>6,}  {row.percent}%")
        y += 22
    y += 6
    for item in legend.notes:
        line(item)
    if legend.classes:
        line(LegendLine("Classes (tiles, counted as above)"))
        for row in legend.classes:
            p.fillRect(QRectF(x, y - 10, 10, 10), QColor(row.swatch))
            p.setPen(KIND_COLOURS["hint"] if row.hidden else INK)
            p.drawText(x + 16, y, fm.elidedText(f"{row.label}: {row.count:,}", Qt.TextElideMode.ElideRight, width - 16))
            y += 16
        y += 4
    for item in legend.footer:
        line(item)
    return y
