"""The heatmap's widgets: category toggles with their counts and the out-of-domain row, the filter notice,
colour bars and the domain banner."""

from __future__ import annotations

from html import escape

import numpy as np
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QLinearGradient, QPainter, QPixmap
from PySide6.QtWidgets import (
    QBoxLayout,
    QCheckBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from cellview.analysis.domain import NOT_AVAILABLE, OUT_OF_DOMAIN_RGBA
from cellview.analysis.model_spec import CATEGORIES, CATEGORY_COLORS
from cellview.analysis.results import plural, whole_percentages
from cellview.gui.canvas.items import paint_hatch
from cellview.outputs.legend import CountRow
from cellview.viewer.overlay import DomainNotice


def swatch(color: str, size: int = 12) -> QPixmap:
    pm = QPixmap(size, size)
    pm.fill(QColor(color))
    return pm


def hatch_swatch(size: int = 14) -> QPixmap:
    """The legend's out-of-domain swatch: the grey tint with the hatching, as the slide shows it."""
    pm = QPixmap(size, size)
    pm.fill(QColor(*OUT_OF_DOMAIN_RGBA[:3]))
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setClipRect(0, 0, size, size)
    paint_hatch(p, QRectF(0, 0, size, size))
    p.end()
    return pm


class CategoryToggles(QWidget):
    """A checkbox per category with its colour swatch and live tile count."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(3)
        self.boxes: dict[str, QCheckBox] = {}
        self.counts: dict[str, QLabel] = {}
        for row, cat in enumerate(CATEGORIES):
            sw = QLabel()
            sw.setPixmap(swatch(CATEGORY_COLORS[cat], 14))
            box = QCheckBox(cat.capitalize())
            box.setChecked(True)
            box.toggled.connect(lambda _on: self.changed.emit())
            count = QLabel("–")
            count.setObjectName("categoryCount")
            count.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            grid.addWidget(sw, row, 0)
            grid.addWidget(box, row, 1)
            grid.addWidget(count, row, 2)
            self.boxes[cat], self.counts[cat] = box, count
        row = len(CATEGORIES)
        self.ood_swatch = QLabel()
        self.ood_swatch.setPixmap(hatch_swatch(14))
        self.ood_label = QLabel("Out of domain")
        self.ood_label.setWordWrap(True)
        self.ood_label.setToolTip("Tiles unlike the model's training data: hatched grey, not in a category colour, "
                                  "and left out of the counts and shares above (unless shown anyway)")
        self.ood_count = QLabel("")
        self.ood_count.setObjectName("categoryCount")
        self.ood_count.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        grid.addWidget(self.ood_swatch, row, 0)
        grid.addWidget(self.ood_label, row, 1)
        grid.addWidget(self.ood_count, row, 2)
        self.set_domain(None)
        grid.setColumnStretch(1, 1)

    def set_domain(self, notice: DomainNotice | None) -> None:
        """The out-of-domain row's visibility, or that the model has no domain score; hidden without a result.
        Its count comes with the others (``set_out_of_domain``)."""
        kind = notice.kind if notice is not None else "none"
        self.ood_swatch.setVisible(kind in ("in", "some", "most"))
        self.ood_count.setVisible(kind in ("in", "some", "most"))
        self.ood_label.setVisible(kind != "none")
        if kind == "unavailable":
            self.ood_label.setText(NOT_AVAILABLE[0].upper() + NOT_AVAILABLE[1:])

    def set_out_of_domain(self, row: CountRow | None) -> None:
        """The out-of-domain tiles the confidence filter keeps and their share (``legend.out_of_domain_row``)."""
        if row is None:
            self.ood_count.setText("")
            return
        self.ood_label.setText(row.label[:1].upper() + row.label[1:])
        self.ood_count.setText(f"{plural(row.count, 'tile')}  {row.percent:>3}%")

    def selected(self) -> tuple[str, ...]:
        return tuple(c for c in CATEGORIES if self.boxes[c].isChecked())

    def set_selected(self, categories: tuple[str, ...]) -> None:
        """Check the categories shown (a change made elsewhere, e.g. a new slide), without emitting ``changed``."""
        for cat, box in self.boxes.items():
            box.blockSignals(True)
            box.setChecked(cat in categories)
            box.blockSignals(False)

    def set_counts(self, counts: dict[str, int] | None, percentages: dict[str, int] | None = None) -> None:
        """Tiles per category and their share (whole percentages that add up to 100)."""
        percentages = percentages if percentages is not None else (whole_percentages(counts) if counts else None)
        for cat, label in self.counts.items():
            if not counts:
                label.setText("–")
            else:
                n = counts.get(cat, 0)
                label.setText(f"{plural(n, 'tile')}  {percentages[cat]:>3}%")


class FilterNotice(QFrame):
    """Amber, right under the heatmap's controls while the display hides tiles or shows out-of-domain calls
    (``overlay.describe_overrides``), with one button that shows the slide as analysed again."""

    resetRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("filterNotice")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(8, 4, 6, 4)
        self.label = QLabel("")
        self.label.setObjectName("filterNoticeText")
        self.label.setWordWrap(True)
        lay.addWidget(self.label, 1)
        self.reset = QPushButton("Show all")
        self.reset.setToolTip("Every classified tile, no confidence filter, out-of-domain tiles hatched and not counted")
        self.reset.clicked.connect(self.resetRequested)
        lay.addWidget(self.reset, 0, Qt.AlignmentFlag.AlignVCenter)
        self.hide()

    def set_text(self, text: str) -> None:
        self.label.setText(f"⚠ {text}" if text else "")
        self.setVisible(bool(text))


class ColorBar(QWidget):
    """Horizontal colour bar (0–100 % for the one-class probability mode; less → more evidence for
    the class activation map); the height follows the font (the kiosk's is large)."""

    def __init__(self, lut: np.ndarray, parent: QWidget | None = None, left: str = "0%", right: str = "100%",
                 title_below: bool = False) -> None:
        super().__init__(parent)
        self.lut = lut
        self.title = ""
        self.left, self.right = left, right
        self.title_below = title_below  # a narrow bar: the ends' labels on one line, the title under them
        self.setFixedHeight(self._height())

    _WRAP = int(Qt.TextFlag.TextWordWrap | Qt.AlignmentFlag.AlignHCenter)

    def _height(self) -> int:
        fm = QFontMetrics(self._label_font())
        if not self.title_below:
            return max(40, 20 + fm.height())
        title_h = fm.boundingRect(0, 0, max(20, self.width()), 10000, self._WRAP, self.title or "x").height()
        return 20 + fm.height() + title_h + 2

    def _label_font(self) -> QFont:
        """A little smaller than the panel's text on the desktop; kiosk-sized text stays at least 18 pt."""
        f = QFont(self.font())
        pt = f.pointSizeF()
        f.setPointSizeF(max(8.5, pt * 0.85) if pt < 16 else max(18.0, pt * 0.9))
        return f

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().changeEvent(event)
        self.setFixedHeight(self._height())

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if self.title_below:
            self.setFixedHeight(self._height())

    def set_title(self, title: str) -> None:
        self.title = title
        if self.title_below:
            self.setFixedHeight(self._height())
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        w = self.width()
        grad = QLinearGradient(0, 0, w, 0)
        n = len(self.lut)
        for i in range(0, n, max(1, n // 16)):
            r, g, b = (int(v) for v in self.lut[i][:3])
            grad.setColorAt(i / (n - 1), QColor(r, g, b))
        r, g, b = (int(v) for v in self.lut[-1][:3])
        grad.setColorAt(1.0, QColor(r, g, b))
        p.fillRect(QRectF(0, 4, w, 12), grad)
        p.setPen(self.palette().text().color())
        f = self._label_font()
        p.setFont(f)
        fm = QFontMetrics(f)
        th = fm.height()
        side = max(fm.horizontalAdvance(self.left), fm.horizontalAdvance(self.right)) + 6
        p.drawText(QRectF(0, 18, side, th), Qt.AlignmentFlag.AlignLeft, self.left)
        p.drawText(QRectF(w - side, 18, side, th), Qt.AlignmentFlag.AlignRight, self.right)
        if self.title_below:  # wrapped, never cut: it names the class whose map is shown
            p.drawText(QRectF(0, 18 + th, w, self.height() - 18 - th), self._WRAP, self.title)
        else:
            title = fm.elidedText(self.title, Qt.TextElideMode.ElideRight, max(10, int(w - 2 * side)))
            p.drawText(QRectF(side, 18, w - 2 * side, th), Qt.AlignmentFlag.AlignHCenter, title)
        p.end()


class DomainBanner(QFrame):
    """Above the slide: a warning when most of the tissue is unlike the model's training data (amber),
    a quieter note when some tiles are; both with the "Show calls anyway" toggle."""

    showAnywayToggled = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("domainBanner")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(12, 6, 12, 6)
        lay.setSpacing(14)
        self.label = QLabel("")
        self.label.setObjectName("domainBannerText")
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.label, 1)
        self.anyway = QCheckBox("Show calls anyway")
        self.anyway.setToolTip("Draw the out-of-domain tiles in their category colours and count them "
                               "(exports follow the screen and say so)")
        self.anyway.toggled.connect(self.showAnywayToggled)
        lay.addWidget(self.anyway, 0, Qt.AlignmentFlag.AlignVCenter)
        self.box = lay
        self.stacked = False
        self.notice = DomainNotice("none")
        self.hide()

    def set_stacked(self, stacked: bool) -> None:
        """Text above the toggle, the warning's headline only (a narrow panel with large text, the kiosk's:
        the toggle stays in view at 1024 × 600); the detail is then the tooltip."""
        self.stacked = stacked
        self.box.setDirection(QBoxLayout.Direction.TopToBottom if stacked else QBoxLayout.Direction.LeftToRight)
        self.box.setAlignment(self.anyway, Qt.AlignmentFlag.AlignLeft if stacked else Qt.AlignmentFlag.AlignVCenter)
        self.set_notice(self.notice)

    @property
    def kind(self) -> str:
        """"warning" (the banner), "note" or "" (hidden)."""
        return {"most": "warning", "some": "note"}.get(self.notice.kind, "")

    def set_notice(self, notice: DomainNotice) -> None:
        self.notice = notice
        self.anyway.blockSignals(True)
        self.anyway.setChecked(notice.shown_anyway)
        self.anyway.blockSignals(False)
        if not (notice.banner or notice.note):
            self.hide()
            return
        name = "domainBanner" if notice.banner else "domainNote"
        if self.objectName() != name:
            self.setObjectName(name)
            self.style().unpolish(self)
            self.style().polish(self)
        head = f"<b>⚠ {escape(notice.headline)}</b>" if notice.banner else escape(notice.headline)
        compact = self.stacked and notice.banner
        self.label.setText(head if compact else f"{head} {escape(notice.detail)}")
        self.label.setToolTip(notice.detail if compact else "")
        self.show()

